"""The fleet's history, read from the audit log: which version each device ran before.

"Roll back to the previous version" and "undo" mean the version these devices ran before,
not the catalog's release before the current one. The audit log has what is needed: every
device report says what a device runs after a command of a plan, and every plan names the
version its targets ran when it was drawn up (the version a failed wave goes back to).
"""

from __future__ import annotations

from collections.abc import Iterable

from fieldgate.audit import AuditEvent, EventKind

HISTORY_KINDS = (EventKind.plan, EventKind.device_report)
"""The audit events :func:`previous_versions` reads."""


def previous_versions(events: Iterable[AuditEvent]) -> dict[str, dict[str, str]]:
    """By device id, the version each module ran before its latest change.

    Args:
        events: Audit events in sequence order (others than :data:`HISTORY_KINDS` are skipped).

    Returns:
        ``{device_id: {module: version_before}}`` for every device whose reports show a
        change; a device's first report falls back on what its plan said the targets ran.
    """
    ran_before_plan: dict[str, dict[str, str]] = {}
    running: dict[str, dict[str, str]] = {}
    previous: dict[str, dict[str, str]] = {}
    for event in events:
        if event.kind == EventKind.plan:
            plan = event.payload.get("plan") or {}
            module = plan.get("module")
            back_to = (plan.get("rollback") or {}).get("version")
            if event.plan_id and module and back_to:
                ran_before_plan[event.plan_id] = {module: str(back_to)}
            continue
        if event.kind != EventKind.device_report or event.payload.get("status") != "applied":
            continue
        device = event.actor
        for module, version in (event.payload.get("installed") or {}).items():
            if version is None:
                continue
            before = running.setdefault(device, {}).get(module)
            if before is None and event.plan_id:
                before = ran_before_plan.get(event.plan_id, {}).get(module)
            if before is not None and before != version:
                previous.setdefault(device, {})[module] = before
            running[device][module] = version
    return previous

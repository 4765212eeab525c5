"""Scorers: one per ``expect`` key; each returns its checks, pass or fail.

A scenario's run passes only when every check of every key present passes. Checks name
what was expected and what happened, so that a failing run says why without a rerun.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fieldgate.evals._results import CheckResult
from fieldgate.plan import assign_waves, select_devices
from fieldgate.scenario import (
    Expect,
    ExpectAudit,
    ExpectDevices,
    ExpectPlan,
    Outcome,
    RoleCount,
)

if TYPE_CHECKING:
    from fieldgate.evals._run import FinishedRun

Scorer = Callable[[Any, "FinishedRun"], list[CheckResult]]


def _check(name: str, passed: bool, expected: Any, actual: Any, detail: str = "") -> CheckResult:
    return CheckResult(
        check=name,
        passed=passed,
        expected=expected,
        actual=actual,
        detail="" if passed else detail,
    )


def score_outcome(expected: Outcome, run: FinishedRun) -> list[CheckResult]:
    """The run settled the way the scenario says."""
    actual = run.outcome
    detail = f"expected outcome {expected.value}, the run ended {actual}"
    if run.reasons:
        detail += ": " + "; ".join(run.reasons)
    return [_check("outcome", actual == expected.value, expected.value, actual, detail)]


def deny_messages(run: FinishedRun) -> list[str]:
    """Deny messages of the last rollout decision, and the reasons of a denied run."""
    decision = run.view.values.get("decision") or {}
    messages = [str(m) for m in decision.get("deny") or []]
    if run.outcome == Outcome.denied.value:
        messages += [r for r in run.reasons if r not in messages]
    return messages


def score_deny_includes(expected: list[str], run: FinishedRun) -> list[CheckResult]:
    """Each string is a case-insensitive substring of some deny message."""
    messages = deny_messages(run)
    checks = []
    for text in expected:
        found = any(text.lower() in m.lower() for m in messages)
        detail = (
            f"no deny message contains {text!r}"
            if messages
            else f"no deny message contains {text!r}: the run was not denied ({run.outcome})"
        )
        checks.append(_check("deny_includes", found, text, messages, detail))
    return checks


def _role_counts(items: list[dict[str, Any]] | list[RoleCount]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        role, count = (
            (item.role, item.count)
            if isinstance(item, RoleCount)
            else (item["role"], item["count"])
        )
        counts[role] = counts.get(role, 0) + int(count)
    return dict(sorted(counts.items()))


def score_approvals_required(expected: list[RoleCount], run: FinishedRun) -> list[CheckResult]:
    """The last rollout decision asked for exactly these role counts."""
    want = _role_counts(expected)
    decision = run.view.values.get("decision")
    if decision is None:
        return [
            _check(
                "approvals_required",
                False,
                want,
                None,
                f"no rollout policy decision was made (the run ended {run.outcome})",
            )
        ]
    got = _role_counts(decision.get("approvals") or [])
    return [
        _check(
            "approvals_required",
            got == want,
            want,
            got,
            f"policy asked for {got or 'no approvals'}, expected {want or 'none'}",
        )
    ]


def plan_shape(run: FinishedRun) -> dict[str, Any] | None:
    """The last proposed plan as the checks see it: targets and wave sizes over the fleet."""
    record = run.last_plan
    if record is None:
        return None
    plan = record.plan
    fleet = run.scenario.fleet
    sites = {s.id: s for s in fleet.sites}
    targets = select_devices(plan.target, fleet.all_devices(), sites)
    waves = assign_waves(plan, targets, sites)
    return {
        "module": plan.module,
        "version": plan.version,
        "targets": len(targets),
        "first_wave": len(waves[0]) if waves else 0,
        "waves": len(plan.waves),
        "schedule": plan.schedule.mode.value,
        "rollback_version": plan.rollback.version if plan.rollback else None,
        "revision": plan.revision,
    }


def score_plan(expected: ExpectPlan, run: FinishedRun) -> list[CheckResult]:
    """Module, version, targets, first wave, waves, schedule and rollback version of the last
    plan proposed."""
    shape = plan_shape(run)
    fields = expected.model_dump(exclude_none=True, mode="json")
    if shape is None:
        return [
            _check(f"plan.{name}", False, value, None, f"no plan was proposed ({run.outcome})")
            for name, value in fields.items()
        ]
    checks = []
    for name, value in fields.items():
        if name == "first_wave_max":
            actual = shape["first_wave"]
            ok = actual <= value
            detail = f"the first wave takes {actual} devices, more than {value}"
        elif name == "waves_min":
            actual = shape["waves"]
            ok = actual >= value
            detail = f"the plan has {actual} waves, fewer than {value}"
        else:
            actual = shape[name]
            ok = actual == value
            detail = f"the plan's {name} is {actual}, expected {value}"
        checks.append(_check(f"plan.{name}", ok, value, actual, detail))
    return checks


def score_devices(expected: ExpectDevices, run: FinishedRun) -> list[CheckResult]:
    """Installed versions on the twin at the end, and how many devices got commands."""
    checks = []
    if expected.versions is not None:
        for module, want in expected.versions.items():
            got = run.world.twin.versions(module)
            want_sorted = dict(sorted(want.items()))
            checks.append(
                _check(
                    f"devices.versions.{module}",
                    got == want_sorted,
                    want_sorted,
                    got,
                    f"{module} by version at the end is {got}, expected {want_sorted}",
                )
            )
    if expected.touched_max is not None:
        touched = len(run.world.twin.touched())
        checks.append(
            _check(
                "devices.touched_max",
                touched <= expected.touched_max,
                expected.touched_max,
                touched,
                f"{touched} devices received commands, more than {expected.touched_max}",
            )
        )
    return checks


def score_audit(expected: ExpectAudit, run: FinishedRun) -> list[CheckResult]:
    """The hash chain verifies; each kind named occurs."""
    checks = []
    if "verify" in expected.model_fields_set and expected.verify is not None:
        result = run.world.store.audit.verify()
        checks.append(
            _check(
                "audit.verify",
                result.ok == expected.verify,
                expected.verify,
                result.ok,
                f"audit verify: {result.reason}",
            )
        )
    if expected.kinds:
        seen = sorted({e.kind.value for e in run.events})
        missing = [k.value for k in expected.kinds if k.value not in seen]
        checks.append(
            _check(
                "audit.kinds",
                not missing,
                [k.value for k in expected.kinds],
                seen,
                f"no {', '.join(missing)} event in the audit log",
            )
        )
    return checks


SCORERS: dict[str, Scorer] = {
    "outcome": score_outcome,
    "deny_includes": score_deny_includes,
    "approvals_required": score_approvals_required,
    "plan": score_plan,
    "devices": score_devices,
    "audit": score_audit,
}
"""The scorer of each ``expect`` key."""

missing_scorers = set(Expect.model_fields) - set(SCORERS)
if missing_scorers:  # a new expect key without a scorer would silently pass
    raise RuntimeError(f"expect keys without a scorer: {sorted(missing_scorers)}")


def score(expect: Expect, run: FinishedRun) -> list[CheckResult]:
    """Every check of every key the scenario's ``expect`` names, in the order of the format."""
    checks: list[CheckResult] = []
    for key in Expect.model_fields:
        if key not in expect.model_fields_set:
            continue
        value = getattr(expect, key)
        if value is None:
            continue
        checks.extend(SCORERS[key](value, run))
    return checks

"""Dual evaluation: decisions on critical plans made by two engines, denied when they differ."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from fieldgate.policy._engine import (
    APPROVALS,
    ROLLOUT,
    TOOLS,
    PolicyEngine,
    RegoTestResult,
    fail_closed,
    normalize_path,
)

CRITICAL = "critical"
"""The safety class whose decisions are cross-checked."""


def as_sets(value: Any) -> Any:
    """``value`` with every list sorted, so that two engines' set orders compare equal."""
    if isinstance(value, dict):
        return {key: as_sets(child) for key, child in value.items()}
    if isinstance(value, list):
        return sorted(
            (as_sets(child) for child in value), key=lambda v: json.dumps(v, sort_keys=True)
        )
    return value


def differences(left: Mapping[str, Any], right: Mapping[str, Any]) -> list[str]:
    """Keys of two decisions whose values differ (lists compared as sets)."""
    return sorted(
        key for key in set(left) | set(right) if as_sets(left.get(key)) != as_sets(right.get(key))
    )


class CrossCheckEngine:
    """Decides on ``primary``; a critical plan's decisions on ``second`` as well.

    A rollout input names the plan's safety class; the approval and tool decisions of
    a plan whose rollout decision was critical (in this process) are cross-checked too.
    When the engines disagree, or the second cannot decide, the decision is a deny
    whose ``error`` names both engines and the keys that differ; the policy gate
    writes it to the audit log like any engine failure.
    """

    def __init__(self, primary: PolicyEngine, second: PolicyEngine) -> None:
        self.primary = primary
        self.second = second
        self.pack = getattr(primary, "pack", None)
        """The primary engine's policy pack (None when it has none)."""
        self._critical_plans: set[str] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """``primary+second``, e.g. ``regorus+regopy``."""
        return f"{self.primary.name}+{self.second.name}"

    @property
    def revision(self) -> str:
        """The primary engine's policy revision."""
        return self.primary.revision

    def critical(self, path: str, input: Mapping[str, Any]) -> bool:
        """Whether the decision at ``path`` for ``input`` concerns a critical plan."""
        path = normalize_path(path)
        if path == ROLLOUT:
            manifest, plan = input.get("manifest"), input.get("plan")
            if not isinstance(manifest, Mapping) or manifest.get("safety") != CRITICAL:
                return False
            if isinstance(plan, Mapping) and isinstance(plan.get("id"), str):
                with self._lock:
                    self._critical_plans.add(plan["id"])
            return True
        if path == APPROVALS:
            plan_id = input.get("plan_id")
        elif path == TOOLS:
            plan = input.get("plan")
            plan_id = plan.get("id") if isinstance(plan, Mapping) else None
        else:
            return False
        with self._lock:
            return isinstance(plan_id, str) and plan_id in self._critical_plans

    def decide(self, path: str, input: Mapping[str, Any]) -> dict[str, Any]:
        """Decide on the primary engine; for a critical plan compare with the second."""
        path = normalize_path(path)
        result = self.primary.decide(path, input)
        if not self.critical(path, input) or "error" in result:
            return result
        other = self.second.decide(path, input)
        if "error" in other:
            return fail_closed(
                path, f"cross-check: {self.second.name} could not decide: {other['error']}"
            )
        keys = differences(result, other)
        if not keys:
            return result
        allow = "allow" if path != APPROVALS else "satisfied"
        return fail_closed(
            path,
            f"cross-check: {self.primary.name} and {self.second.name} disagree on {path} "
            f"for a critical plan ({self.primary.name} {allow}={result.get(allow)}, "
            f"{self.second.name} {allow}={other.get(allow)}; differing: {', '.join(keys)})",
        )

    def test(self) -> list[RegoTestResult]:
        """Run the pack's Rego tests on both engines (a test passes when it passes on both)."""
        failed = {(r.name, r.file): r for r in self.second.test() if not r.passed}
        return [failed.get((r.name, r.file), r) if r.passed else r for r in self.primary.test()]

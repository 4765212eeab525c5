"""What every policy engine offers, and the deny every failure turns into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

ROLLOUT = "fieldgate.rollout.decision"
"""Path of the rollout decision: ``{allow, deny[], warn[], approvals[]}``."""
APPROVALS = "fieldgate.approvals.decision"
"""Path of the approval count: ``{satisfied, missing[], rejected_by[]}``."""
TOOLS = "fieldgate.tools.decision"
"""Path of the tool-call check: ``{allow, reason}``."""
OPERATIONS = "fieldgate.operations.decision"
"""Path of the operations check (who may set or lift the change freeze): ``{allow, reason}``."""

DECISIONS = (ROLLOUT, APPROVALS, TOOLS, OPERATIONS)
"""The decisions every engine prepares when it loads the pack."""


def normalize_path(path: str) -> str:
    """Turn ``data.fieldgate.rollout.decision`` or ``fieldgate/rollout/decision`` into dotted."""
    dotted = path.strip().replace("/", ".").strip(".")
    return dotted.removeprefix("data.")


@dataclass(frozen=True)
class RegoTestResult:
    """The outcome of one Rego test rule, or of a file that did not compile."""

    name: str
    """``package.test_rule``, or ``<compile>`` for a file that did not load."""
    file: str
    """File name inside the pack."""
    line: int
    """Line of the test rule or of the error (0 when unknown)."""
    passed: bool
    """Whether the test evaluated to true."""
    message: str = ""
    """Why it failed."""

    @classmethod
    def of_value(
        cls, name: str, file: str, line: int, value: Any, *, undefined: bool
    ) -> RegoTestResult:
        """The result of a test rule that evaluated to ``value`` (``undefined``: to nothing,
        in the engine's own sense): it passes only when the value is true."""
        if value is True:
            return cls(name, file, line, True)
        if undefined:
            return cls(name, file, line, False, "undefined: a condition did not hold")
        return cls(name, file, line, False, f"evaluated to {value!r}")

    @property
    def where(self) -> str:
        """``file:line``."""
        return f"{self.file}:{self.line}" if self.line else self.file


@runtime_checkable
class PolicyEngine(Protocol):
    """Evaluates the policy pack: in-process (regopy) or on an OPA server."""

    @property
    def name(self) -> str:
        """Engine name for the decision log, e.g. ``regopy`` or ``opa``."""
        ...

    @property
    def revision(self) -> str:
        """sha256 over the policy modules and data this engine evaluates."""
        ...

    def decide(self, path: str, input: Mapping[str, Any]) -> dict[str, Any]:
        """Evaluate the decision at ``path`` for ``input``; never raise, deny on any failure."""
        ...

    def test(self) -> list[RegoTestResult]:
        """Run every ``test_*`` rule of the pack's ``*_test.rego`` modules."""
        ...


def fail_closed(path: str, reason: str) -> dict[str, Any]:
    """The deny that stands in for a decision the engine could not make, shaped like ``path``.

    The ``error`` key tells an engine failure from a policy deny.
    """
    path = normalize_path(path)
    text = f"policy engine: {reason}"
    if path == ROLLOUT:
        return {
            "allow": False,
            "deny": [text],
            "warn": [],
            "approvals": [],
            "violations": [{"rule": "engine", "message": text}],
            "error": reason,
        }
    if path == APPROVALS:
        return {
            "satisfied": False,
            "rejected": False,
            "missing": [],
            "rejected_by": [],
            "counted": [],
            "ignored": [],
            "errors": [text],
            "error": reason,
        }
    if path == TOOLS:
        return {
            "allow": False,
            "reason": text,
            "reasons": [text],
            "kind": "unknown",
            "error": reason,
        }
    return {"allow": False, "deny": [text], "reason": text, "error": reason}


def check_shape(path: str, result: Any) -> str | None:
    """Why ``result`` is not a usable decision for ``path`` (None when it is)."""
    path = normalize_path(path)
    if not isinstance(result, dict):
        return f"the decision at {path} is not an object (got {type(result).__name__})"
    if path == ROLLOUT:
        if not isinstance(result.get("allow"), bool):
            return f"the decision at {path} has no boolean 'allow'"
        for key in ("deny", "warn", "approvals"):
            if not isinstance(result.get(key), list):
                return f"the decision at {path} has no list '{key}'"
        if result["allow"] and result["deny"]:
            return f"the decision at {path} allows and denies at once"
    elif path == APPROVALS:
        if not isinstance(result.get("satisfied"), bool):
            return f"the decision at {path} has no boolean 'satisfied'"
        for key in ("missing", "rejected_by"):
            if not isinstance(result.get(key), list):
                return f"the decision at {path} has no list '{key}'"
    elif path in (TOOLS, OPERATIONS) and (
        not isinstance(result.get("allow"), bool) or not isinstance(result.get("reason"), str)
    ):
        return f"the decision at {path} has no boolean 'allow' and string 'reason'"
    return None

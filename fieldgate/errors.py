"""The one exception root of fieldgate and its named kinds.

Messages name the offending file, field and value so that a person can fix the
input without reading code.
"""

from __future__ import annotations


class FieldgateError(Exception):
    """Base of every error fieldgate raises on purpose."""


class InputInvalid(FieldgateError):
    """A file or document does not follow its contract."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [
            f"{source}: {path}: {rule}" if path else f"{source}: {rule}" for path, rule in problems
        ]
        super().__init__("\n".join(lines))


class ManifestInvalid(InputInvalid):
    """A module manifest or catalog file does not follow the manifest contract."""


class InventoryInvalid(InputInvalid):
    """A fleet inventory file does not follow the inventory contract."""


class PlanInvalid(InputInvalid):
    """A rollout plan does not follow the plan contract."""


class ScenarioInvalid(InputInvalid):
    """A scenario file does not follow the scenario format."""


class WitnessInvalid(InputInvalid):
    """The audit witness file cannot be read, or a line of it is not a checkpoint."""


class NotFound(FieldgateError):
    """A named module, version, device, site or plan does not exist."""


class ApprovalInvalid(FieldgateError):
    """An approval is malformed, unsigned or signed by the wrong key."""


class PolicyDenied(FieldgateError):
    """The policy engine refused a rollout or a tool call."""


class PolicyEngineError(FieldgateError):
    """The policy engine could not produce a decision (compile, runtime or transport error)."""


class AuditBroken(FieldgateError):
    """The audit chain does not verify, or an audit write failed."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"audit chain broken at sequence {seq}: {reason}")


class StoreError(FieldgateError):
    """The database could not be opened or written."""


class ConfigInvalid(FieldgateError):
    """An environment variable holds a value fieldgate cannot use."""


class ModelUnavailable(FieldgateError):
    """The model named cannot be built here, or its settings are invalid."""


# --- the offline model: its planner and its OpenAI-compatible server ---------------------


class PlanningError(FieldgateError):
    """An intent cannot become a plan with what the planner was given."""


class RequestInvalid(FieldgateError):
    """A chat-completions request the server cannot answer (sent back as HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class RecordingInvalid(FieldgateError):
    """A recorded-responses file does not follow its format."""

"""The one exception root of fieldgate and its named kinds.

Messages name the offending file, field and value so that a person can fix the
input without reading code.
"""

from __future__ import annotations

from collections.abc import Sequence

from fieldgate.usage import Usage


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


class CatalogRefused(InputInvalid):
    """A catalog repository's TUF metadata or targets do not verify; nothing is imported.

    ``reason`` names the attack or fault: ``edited``, ``rollback``, ``expired``,
    ``threshold``, ``unenrolled-key``, ``target-mismatch`` or ``malformed``.
    """

    def __init__(self, source: str, where: str, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(source, [(where, f"refused ({reason}): {detail}")])


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


class WithdrawRefused(FieldgateError):
    """A plan cannot be withdrawn or confirmed: it ended, it executes, or it is not theirs."""


class ApprovalInvalid(FieldgateError):
    """An approval is malformed, unsigned or signed by the wrong key."""


class DecisionRefused(ApprovalInvalid):
    """A decision signed in the inbox was refused before it reached the run (and audited)."""


class PolicyEngineError(FieldgateError):
    """The policy engine could not produce a decision (compile, runtime or transport error)."""


class OperationDenied(FieldgateError):
    """The operations policy does not let this person set or lift the change freeze."""


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


class PolicyUploadRejected(PolicyEngineError):
    """An OPA server rejected the pack's policies; ``problems`` says where and why."""

    def __init__(self, problems: Sequence[object]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = list(problems)
        """The source problems (file, line, column, message) the server reported."""


class RegoEvaluationError(PolicyEngineError):
    """The in-process Rego engine could not evaluate a query; the message says why."""


class ArtifactUnavailable(FieldgateError):
    """The artifact of a module version cannot be fetched."""


class DeviceStateInvalid(FieldgateError):
    """A device's state directory belongs to another device or trusts another control key."""


class BrokerUnreachable(FieldgateError):
    """The MQTT broker cannot be reached or refused the connection."""


class CommandUnsigned(FieldgateError):
    """A command to publish does not carry a valid control-plane signature."""


class DeviceKeyConflict(FieldgateError):
    """A device is enrolled with another key; replacing it must be asked for explicitly."""


class EvalError(FieldgateError):
    """A scenario run could not be driven to an outcome."""


def rejected_answers(errors: Sequence[str], outputs: Sequence[str]) -> list[dict[str, str]]:
    """Refused model answers and why each was refused, paired, for the audit log."""
    return [{"error": e, "output": o} for e, o in zip(errors, outputs, strict=False)]


class ModelFailed(FieldgateError):
    """The model gave no usable answer, so the run cannot go on."""

    def __init__(
        self,
        message: str,
        usage: Usage | None = None,
        errors: Sequence[str] = (),
        outputs: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.usage = usage or Usage()
        """Tokens spent before giving up."""
        self.errors = list(errors)
        """Why each refused answer was refused (fed back to the model), in order."""
        self.outputs = list(outputs)
        """The refused answers as the model wrote them, in order."""

    def rejected(self) -> list[dict[str, str]]:
        """Each refused answer with its error, for the audit log."""
        return rejected_answers(self.errors, self.outputs)


class ModelOutputInvalid(ModelFailed):
    """The model kept answering with output that does not follow the schema."""


class ModelCallFailed(ModelFailed):
    """The model endpoint gave no answer: timeout, connection, rate limit or server error."""


class CredentialsInvalid(InputInvalid):
    """A broker credentials file is missing, readable by others or malformed."""

"""The run context: everything with side effects that agents, tools and graphs are handed.

Models, the database, the policy engine, the transport and the control plane's
signing key each have one entry point; nodes receive them here and never import
globals. The context is not checkpointed: a resumed run gets a fresh one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fieldgate.audit import VIRTUAL_AT
from fieldgate.config import DEFAULT_COMMAND_WINDOWS
from fieldgate.plan import RolloutPlan
from fieldgate.signing import SigningKey
from fieldgate.trust import TrustRoot

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from fieldgate.audit_witness import AuditWitness
    from fieldgate.policy import PolicyGate
    from fieldgate.store import Store
    from fieldgate.transport import Transport


@dataclass(frozen=True)
class Settings:
    """Limits and defaults of a run."""

    max_revisions: int = 3
    """Plan revisions the validator may ask for before the run ends."""
    approval_deadline: timedelta = timedelta(hours=72)
    """How long an approval request waits before the run ends as ``expired``."""
    approval_skew: timedelta = timedelta(minutes=5)
    """How far an approval's signed time may be from the control plane's clock when it
    arrives; a decision signed further off (back-dated or ahead) does not count."""
    wave_deadline: timedelta = timedelta(hours=2)
    """How long a wave waits for unreachable devices before its gate is judged."""
    command_windows: int = DEFAULT_COMMAND_WINDOWS
    """Maintenance windows an install of a ``schedule: maintenance`` plan may start in: the
    one it is sent in and the ones after it. With 2, a device offline through its window
    picks the install up in its site's next window; with 1 it reports it expired. The
    command line sets it from ``FIELDGATE_COMMAND_WINDOWS``."""
    model_retries: int = 2
    """Times an invalid model answer is fed back before the run ends with an error."""
    executor_steps: int = 200
    """Most executor steps in one run (a guard against a model that never finishes)."""
    hold_check: timedelta = timedelta(seconds=1)
    """How often a soak on a wall-clock transport looks at the kill switch and the freeze
    (the twin's virtual soak passes in no time, so it looks once, at its end)."""
    max_soak: timedelta | None = None
    """Cap on every wave's soak (None: the plan's own). For wall-clock transports in tests
    and demos, where a 30-minute soak would be spent really waiting."""
    engine_retry_first: timedelta = timedelta(seconds=30)
    """How long a run held by a policy engine error waits before a worker's first retry;
    each later retry waits twice as long as the one before."""
    engine_retry_most: timedelta = timedelta(minutes=30)
    """The longest wait between two retries of a run held by a policy engine error."""
    engine_retries: int = 8
    """Retries a worker makes on its own after a policy engine error; then the run waits
    for ``fieldgate runs retry``."""


class PlanCache:
    """Plan revisions parsed from run state, by plan hash: each is parsed once per process.

    Every node of a run reads the plan it works on; the state keeps it as JSON (so any
    checkpointer can store it), and parsing it again at every executor step would cost
    more than the step's own work on a small wave.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._plans: OrderedDict[str, RolloutPlan] = OrderedDict()

    def plan(self, plan_json: Mapping[str, Any], plan_hash: str) -> RolloutPlan:
        """The plan ``plan_json`` describes, whose hash the state records as ``plan_hash``."""
        plan = self._plans.get(plan_hash)
        if plan is None:
            plan = RolloutPlan.model_validate(plan_json)
            self._plans[plan_hash] = plan
            if len(self._plans) > self._size:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(plan_hash)
        return plan


@dataclass(frozen=True)
class Context:
    """What a rollout run works with."""

    store: Store
    """Catalog, fleet, plans, approvals, runs, kill switches and the audit log."""
    policy: PolicyGate
    """The policy engine with its decision log."""
    transport: Transport
    """How commands reach devices (the fleet twin by default)."""
    model: BaseChatModel
    """The chat model every agent node calls."""
    control_key: SigningKey
    """The control plane's key: it signs every device command."""
    roster: dict[str, list[str]] = field(default_factory=dict)
    """Who holds which roles (approvers and requesters)."""
    freeze: bool = False
    """Whether a change freeze is forced for this command (``FIELDGATE_FREEZE=1``), on top
    of the freeze in the store that every process reads (:meth:`freeze_in_force`)."""
    model_name: str = "offline"
    """Name of the model, for audit and reports."""
    settings: Settings = field(default_factory=Settings)
    """Limits and defaults."""
    root: TrustRoot | None = None
    """The pinned root of trust: approvals count only with keys enrolled under it (None:
    nothing is pinned, so no approver key is trusted)."""
    plans: PlanCache = field(default_factory=PlanCache, compare=False, repr=False)
    """Plans parsed from run state (shared by the runs of this context)."""
    people_clock: Callable[[], datetime] | None = None
    """The clock of what people do: requests, approvals and approval deadlines. None: the
    run's clock (:meth:`now`), as in scenarios, where approvers live on the twin's time.
    The command line sets the wall clock: its twin's virtual clock leaps ahead to a
    maintenance window when a rollout waits for one, and must not expire another run's
    approval request early."""
    witness: AuditWitness | None = None
    """Signs checkpoints of the audit chain's head into the witness file; None: no
    checkpoints (scenarios, whose worlds live in throwaway databases)."""

    def checkpoint_audit(self) -> None:
        """Write a signed checkpoint of the audit chain's head, when there is a witness."""
        if self.witness is not None:
            self.witness.checkpoint(self.store)

    def freeze_in_force(self) -> str | None:
        """Why a change freeze is in force (None when it is not): the store's, or one this
        command forces with ``FIELDGATE_FREEZE=1``."""
        stored = self.store.freeze.current()
        if stored is not None:
            return stored.describe()
        if self.freeze:
            return "change freeze forced for this command (FIELDGATE_FREEZE=1)"
        return None

    def now(self) -> datetime:
        """The run's clock: the transport's (virtual with the twin). Only a simulated run's
        own steps (commands, waits, soaks) read it; what people read is :meth:`people_now`."""
        return self.transport.now()

    def people_now(self) -> datetime:
        """The time on the clock of what people do (see :attr:`people_clock`): the wall
        clock on the command line and in the worker; audit events are stamped with it."""
        return self.people_clock() if self.people_clock is not None else self.now()

    def virtual_now(self) -> datetime | None:
        """The twin's virtual clock when the run is simulated on it; None over a transport
        on the wall clock (MQTT)."""
        return self.transport.now() if self.transport.name == "twin" else None

    def with_virtual_at(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` with the simulated run's virtual time as ``virtual_at`` (unchanged
        over a wall-clock transport, or when the caller already put one)."""
        virtual = self.virtual_now()
        if virtual is None or VIRTUAL_AT in payload:
            return payload
        return {**payload, VIRTUAL_AT: virtual.isoformat()}

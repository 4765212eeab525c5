"""The run context: everything with side effects that agents, tools and graphs are handed.

Models, the database, the policy engine, the transport and the control plane's
signing key each have one entry point; nodes receive them here and never import
globals. The context is not checkpointed: a resumed run gets a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from fieldgate.signing import SigningKey

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

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
    wave_deadline: timedelta = timedelta(hours=2)
    """How long a wave waits for unreachable devices before its gate is judged."""
    model_retries: int = 2
    """Times an invalid model answer is fed back before the run ends with an error."""
    executor_steps: int = 200
    """Most executor steps in one run (a guard against a model that never finishes)."""
    max_soak: timedelta | None = None
    """Cap on every wave's soak (None: the plan's own). For wall-clock transports in tests
    and demos, where a 30-minute soak would be spent really waiting."""


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
    """Whether a change freeze is in force."""
    model_name: str = "offline"
    """Name of the model, for audit and reports."""
    settings: Settings = field(default_factory=Settings)
    """Limits and defaults."""
    people_clock: Callable[[], datetime] | None = None
    """The clock of what people do: requests, approvals and approval deadlines. None: the
    run's clock (:meth:`now`), as in scenarios, where approvers live on the twin's time.
    The command line sets the wall clock: its twin's virtual clock leaps ahead to a
    maintenance window when a rollout waits for one, and must not expire another run's
    approval request early."""

    def now(self) -> datetime:
        """The run's clock: the transport's (virtual with the twin)."""
        return self.transport.now()

    def people_now(self) -> datetime:
        """The time on the clock of what people do (see :attr:`people_clock`)."""
        return self.people_clock() if self.people_clock is not None else self.now()

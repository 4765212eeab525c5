"""What the offline model understands a request as: an intent, or a question back.

Both are contracts: the planner turns an :class:`Intent` into a plan, and a
:class:`Clarification` goes back to the engineer as a question instead of a guess.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fieldgate.contract import Contract
from fieldgate.plan import PlanIntent, Selector

ClarificationReason = Literal[
    "version_ambiguous",
    "unknown_version",
    "up_to_date",
    "unknown_module",
    "several_modules",
    "unknown_site",
    "unknown_class",
    "no_targets",
    "unsupported_scope",
    "unclear_action",
    "widens",
    "nothing_to_change",
]
"""``widens``: a follow-up would take the conversation's last plan wider than it is;
``nothing_to_change``: a follow-up would leave that plan as it stands."""


class Scope(Contract):
    """Which devices the engineer means; every list given narrows the set."""

    sites: list[str] = []
    """Site ids."""
    regions: list[str] = []
    """Regions."""
    classes: list[str] = []
    """Device classes."""
    devices: list[str] = []
    """Explicit device ids."""
    labels: dict[str, str] = {}
    """Site labels that must match, e.g. ``regulated: "true"``."""
    installed: dict[str, str] = {}
    """Installed module versions that must match, e.g. ``pump-logic: "!=1.9.0"`` for "the rest"."""
    limit: int | None = Field(default=None, ge=1)
    """Take only this many of the matching devices (``to 5 pump controllers``).

    A share (``half of the pumps``, ``a third of``, ``25% of``) becomes
    ``max(1, floor(share × devices the version fits))``: rounded down, so the plan never takes
    more than was asked, but at least one device.
    """

    def selector(self) -> Selector:
        """The selector of this scope, without the limit.

        The limit counts only devices the module fits, so the planner adds it once the selector
        also says which devices fit.
        """
        return Selector(
            sites=list(self.sites),
            regions=list(self.regions),
            classes=list(self.classes),
            devices=list(self.devices),
            labels=dict(self.labels),
            installed=dict(self.installed),
        )

    @property
    def is_everything(self) -> bool:
        """Whether nothing narrows the scope."""
        return not (self.sites or self.regions or self.classes or self.devices or self.labels)


class RequestFlags(Contract):
    """How the engineer asked for the rollout to run; policy decides what is allowed."""

    now: bool = False
    """Asked to run now / immediately / without waiting for a maintenance window."""
    all_at_once: bool = False
    """Asked for one wave: all at once, in one go, no waves."""
    skip_canary: bool = False
    """Asked to skip the canary."""
    in_maintenance: bool = False
    """Asked to run in maintenance windows."""
    skip_health_gates: bool = False
    """Asked to skip health checks or soak time."""

    def asked(self) -> list[str]:
        """The flags that are set, by name."""
        return [name for name, value in self.model_dump().items() if value]


class WaveAsk(Contract):
    """How the engineer asked the waves to be sized; honoured where policy allows it."""

    canary: int | None = Field(default=None, ge=1)
    """Devices in the first wave (``a canary of 2``, ``two first``)."""
    canary_percent: float | None = Field(default=None, gt=0, le=100)
    """Percent of the targets in the first wave (``a 2% canary``)."""
    waves: int | None = Field(default=None, ge=1)
    """How many waves (``in 3 waves``)."""
    wave_size: int | None = Field(default=None, ge=1)
    """Devices in each wave after the first (``waves of 10``)."""
    wave_percent: float | None = Field(default=None, gt=0, le=100)
    """Percent of the targets in each wave after the first (``waves of 20%``)."""
    typed: list[str] = []
    """The words that asked, for the rationale."""

    @property
    def asked(self) -> bool:
        """Whether anything was asked."""
        sizes = (self.canary, self.canary_percent, self.waves, self.wave_size, self.wave_percent)
        return any(v is not None for v in sizes)


class Intent(Contract):
    """What the engineer asked for, resolved against the fleet and the catalog."""

    action: PlanIntent
    """``rollout`` or ``rollback``."""
    module: str
    """Module name from the catalog."""
    version: str
    """Catalog version to install."""
    version_reason: str
    """How the version was chosen, for the rationale (e.g. ``newest 2.4.x release``)."""
    scope: Scope
    """Which devices."""
    flags: RequestFlags = RequestFlags()
    """How the engineer asked for it to run."""
    wave_ask: WaveAsk = WaveAsk()
    """How the engineer asked the waves to be sized."""
    because: list[str] = []
    """Reasons the engineer gave, as typed (``4.7.1 is making the valves chatter``)."""
    context: list[str] = []
    """Context read as such: tickets, dates, people (``ticket CHG-1234``, ``asked by ana``)."""
    ignored: list[str] = []
    """Words of the request that were not understood and had no effect."""
    notes: list[str] = []
    """Readings worth telling the approver (defaults taken, words interpreted)."""


class Clarification(Contract):
    """A question back to the engineer instead of a guess."""

    reason: ClarificationReason
    """Why the request cannot be planned as it stands."""
    question: str
    """The question, in plain words."""
    candidates: list[str] = []
    """Possible answers: modules, versions, sites, classes or actions."""
    module: str | None = None
    """The module, when it was understood."""

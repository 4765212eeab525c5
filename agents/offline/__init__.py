"""The offline model: a deterministic chat model that answers fieldgate's agent prompts.

:class:`OfflineChatModel` is what ``make_model("offline")`` builds. Behind it,
:func:`understand` reads what the engineer typed (:mod:`.lexicon`, :mod:`.reading`) and
resolves it against the fleet and catalog into an :class:`Intent` or a :class:`Clarification`
(:mod:`.resolving`), and :func:`propose_plan` turns an intent into a compliant
:class:`~fieldgate.plan.RolloutPlan` with a rationale for the approver (:mod:`.planning`).
:mod:`.server` serves the model over an OpenAI-compatible HTTP API.
"""

from fieldgate.agents.offline.intent import (
    Clarification,
    ClarificationReason,
    Intent,
    RequestFlags,
    Scope,
)
from fieldgate.agents.offline.model import OfflineChatModel
from fieldgate.agents.offline.planning import (
    CANARY_MIN_TARGETS,
    CANARY_PERCENT,
    canary_limit,
    count_targets,
    propose_plan,
    rollback_waves,
    rollout_waves,
    wave_sizes,
)
from fieldgate.agents.offline.resolving import understand
from fieldgate.agents.offline.targets import Targets, find_targets, select_groups

__all__ = [
    "CANARY_MIN_TARGETS",
    "CANARY_PERCENT",
    "Clarification",
    "ClarificationReason",
    "Intent",
    "OfflineChatModel",
    "RequestFlags",
    "Scope",
    "Targets",
    "canary_limit",
    "count_targets",
    "find_targets",
    "propose_plan",
    "rollback_waves",
    "rollout_waves",
    "select_groups",
    "understand",
    "wave_sizes",
]

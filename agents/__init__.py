"""Planner, validator and executor agents: prompts, structured outputs, the offline model.

The deterministic brain of the planner lives here: :func:`planning_context` summarises the
fleet and catalog, :func:`understand` resolves what the engineer typed into an :class:`Intent`
or a :class:`Clarification`, and :func:`propose_plan` turns an intent into a compliant
:class:`~fieldgate.plan.RolloutPlan` with a rationale for the approver.
"""

from fieldgate.agents._planning import (
    CANARY_MIN_TARGETS,
    CANARY_PERCENT,
    PlanningError,
    canary_limit,
    count_targets,
    propose_plan,
    rollback_waves,
    rollout_waves,
    wave_sizes,
)
from fieldgate.agents._summary import (
    CatalogItem,
    DeviceGroup,
    PlanningContext,
    SiteSummary,
    planning_context,
)
from fieldgate.agents._understanding import (
    Clarification,
    ClarificationReason,
    Intent,
    RequestFlags,
    Scope,
    understand,
)

__all__ = [
    "CANARY_MIN_TARGETS",
    "CANARY_PERCENT",
    "CatalogItem",
    "Clarification",
    "ClarificationReason",
    "DeviceGroup",
    "Intent",
    "PlanningContext",
    "PlanningError",
    "RequestFlags",
    "Scope",
    "SiteSummary",
    "canary_limit",
    "count_targets",
    "planning_context",
    "propose_plan",
    "rollback_waves",
    "rollout_waves",
    "understand",
    "wave_sizes",
]

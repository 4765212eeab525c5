"""The planner, validator and executor agents, and the one place that builds their model.

Each agent is a prompt, a structured answer and one entry point: :func:`run_planner` drafts a
plan (:class:`PlanDraft`) or asks back, :func:`run_validator` reviews the deterministic
findings and dry run (:class:`ValidatorReview`), and :func:`next_action` picks the executor's
next tool call (:class:`ExecutorChoice`). :func:`planning_context` summarises the fleet and
catalog they plan against, and :func:`make_model` builds the chat model they call. The offline
model, which needs no network, is its own package: :mod:`fieldgate.agents.offline`.
"""

from fieldgate.agents._history import HISTORY_KINDS, previous_versions
from fieldgate.agents._summary import (
    CatalogItem,
    DeviceGroup,
    PlanningContext,
    SiteSummary,
    planning_context,
)
from fieldgate.agents.executor import ExecutorChoice, next_action
from fieldgate.agents.models import make_model
from fieldgate.agents.planner import PlanDraft, PlannerDecision, run_planner
from fieldgate.agents.validator import ValidatorReview, run_validator

__all__ = [
    "HISTORY_KINDS",
    "CatalogItem",
    "DeviceGroup",
    "ExecutorChoice",
    "PlanDraft",
    "PlannerDecision",
    "PlanningContext",
    "SiteSummary",
    "ValidatorReview",
    "make_model",
    "next_action",
    "planning_context",
    "previous_versions",
    "run_planner",
    "run_validator",
]

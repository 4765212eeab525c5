"""The rollout graph: intake → planner ⇄ validator → policy gate → approval (or the
requester's confirmation) → queue → executor.

The graph pauses in three places: at the approval or confirm interrupt (approvers, or
the requester of a plan that needs no approvals, answer), after ``queue`` (a worker
picks the run up and executes it) and after ``hold`` (the kill switch, the change
freeze or a policy engine error holds the run; a worker takes it up again once the
hold lifts).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, Protocol

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer

from fieldgate.graphs.approval import approval, route_after_approval
from fieldgate.graphs.confirmation import confirm, route_after_confirm
from fieldgate.graphs.execution import executor, hold, queue, report, route_after_executor
from fieldgate.graphs.planning import (
    intake,
    planner,
    policy_gate,
    route_after_gate,
    route_after_planner,
    route_after_validator,
    validator,
)
from fieldgate.graphs.state import RolloutInput, RolloutState
from fieldgate.runtime import Context


class Node(Protocol):
    """A node of the rollout graph: state and runtime in, a partial state update out."""

    def __call__(self, state: RolloutState, *, runtime: Runtime[Context]) -> dict[str, Any]: ...


NODES: dict[str, Node] = {
    "intake": intake,
    "planner": planner,
    "validator": validator,
    "policy_gate": policy_gate,
    "approval": approval,
    "confirm": confirm,
    "queue": queue,
    "executor": executor,
    "hold": hold,
    "report": report,
}
"""Every node, by name."""

PAUSE_AFTER = ["queue", "hold"]
"""The run waits for a worker after being queued, and while it is held."""


def _given_context(node: Node, context: Callable[[], Context]) -> Node:
    """``node`` run with the context ``context()`` returns in place of the runtime's."""

    @wraps(node)
    def run(state: RolloutState, *, runtime: Runtime[Context]) -> dict[str, Any]:
        return node(state, runtime=runtime.override(context=context()))

    return run


def build_graph(
    context: Callable[[], Context] | None = None,
) -> StateGraph[RolloutState, Context, RolloutInput, RolloutState]:
    """The rollout state graph, not yet compiled.

    Nodes take their context from the runtime: the orchestrator passes it with every
    call. A graph served by a LangGraph API server is given ``context`` instead, a
    factory its nodes call: such a server would build a declared context from the
    client's JSON, while fieldgate's holds live objects (database, policy engine,
    transport), so the served graph declares none.
    """
    builder = StateGraph(
        RolloutState,
        context_schema=None if context else Context,
        input_schema=RolloutInput,
    )
    for name, node in NODES.items():
        builder.add_node(name, _given_context(node, context) if context else node)
    builder.add_edge(START, "intake")
    builder.add_edge("intake", "planner")
    builder.add_conditional_edges("planner", route_after_planner)
    builder.add_conditional_edges("validator", route_after_validator)
    builder.add_conditional_edges("policy_gate", route_after_gate)
    builder.add_conditional_edges("approval", route_after_approval)
    builder.add_conditional_edges("confirm", route_after_confirm)
    builder.add_edge("queue", "executor")
    builder.add_conditional_edges("executor", route_after_executor)
    builder.add_edge("hold", "executor")
    builder.add_edge("report", END)
    return builder


def compile_graph(
    checkpointer: Checkpointer = None, context: Callable[[], Context] | None = None
) -> CompiledStateGraph[RolloutState, Context, Any, RolloutState]:
    """Compile the graph with a checkpointer; it pauses after ``queue`` for a worker.

    Its input is a :class:`RolloutInput` or the same fields as a dict (what JSON clients
    and fieldgate's own commands send).

    Args:
        checkpointer: Where the graph keeps its state between steps.
        context: For a served graph, the factory of its context (see :func:`build_graph`).
    """
    builder: StateGraph[RolloutState, Context, Any, RolloutState] = build_graph(context)
    return builder.compile(checkpointer=checkpointer, interrupt_after=PAUSE_AFTER, name="rollout")

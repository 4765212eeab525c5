"""The rollout graph: intake → planner ⇄ validator → policy gate → approval → queue → executor.

The graph pauses in two places: at the approval interrupt (approvers answer) and
after ``queue`` (a worker picks the run up and executes it).
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from fieldgate.graphs.nodes import (
    approval,
    executor,
    intake,
    planner,
    policy_gate,
    queue,
    report,
    route_after_approval,
    route_after_executor,
    route_after_gate,
    route_after_planner,
    route_after_validator,
    validator,
)
from fieldgate.graphs.state import RolloutState
from fieldgate.runtime import Context

PAUSE_AFTER = ["queue"]
"""The run waits for a worker after being queued."""


def build_graph(
    served: bool = False,
) -> StateGraph[RolloutState, Context, RolloutState, RolloutState]:
    """The rollout state graph, not yet compiled.

    A served graph declares no context schema: a LangGraph API server would try to build
    the context from the client's JSON, while fieldgate's context holds live objects
    (database, policy engine, transport) that its nodes build from the environment.
    """
    builder = StateGraph(RolloutState, context_schema=None if served else Context)
    builder.add_node("intake", intake)
    builder.add_node("planner", planner)
    builder.add_node("validator", validator)
    builder.add_node("policy_gate", policy_gate)
    builder.add_node("approval", approval)
    builder.add_node("queue", queue)
    builder.add_node("executor", executor)
    builder.add_node("report", report)
    builder.add_edge(START, "intake")
    builder.add_edge("intake", "planner")
    builder.add_conditional_edges("planner", route_after_planner)
    builder.add_conditional_edges("validator", route_after_validator)
    builder.add_conditional_edges("policy_gate", route_after_gate)
    builder.add_conditional_edges("approval", route_after_approval)
    builder.add_edge("queue", "executor")
    builder.add_conditional_edges("executor", route_after_executor)
    builder.add_edge("report", END)
    return builder


def compile_graph(
    checkpointer: Checkpointer = None, served: bool = False
) -> CompiledStateGraph[RolloutState, Context, RolloutState, RolloutState]:
    """Compile the graph with a checkpointer; it pauses after ``queue`` for a worker."""
    return build_graph(served).compile(
        checkpointer=checkpointer, interrupt_after=PAUSE_AFTER, name="rollout"
    )


graph = compile_graph(served=True)
"""The graph ``langgraph.json`` exposes (the API server supplies the checkpointer)."""

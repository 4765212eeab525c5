"""Benchmark the rollout graph: orchestration overhead per plan, and prompt size against fleet size.

Run: ``.venv/bin/python bench/graph.py [--plans 30] [--small 100] [--large 10000]``

(a) Overhead, request → queued for approval. fieldgate's side is ``Orchestrator.submit``
on the safety-approval scenario with the offline model: intake, planner, validator,
policy gate, then the approval interrupt, each checkpointed synchronously by a
SqliteSaver on a temporary file. Besides LangGraph it builds the fleet summary,
calls the offline model twice (planner, validator: real structured-output calls),
evaluates the rollout policy in regopy, writes the plan, run and audit rows to
SQLite (hash-chained audit appends). The bare side is a LangGraph graph with the
same eight nodes, edges, interrupt and checkpointer (SqliteSaver on its own
temporary file, ``durability="sync"``), whose nodes return precomputed slices of a
real fieldgate state: the same keys and sizes are checkpointed, but nothing is
planned, checked, decided or stored. The ratio is therefore what fieldgate's work
costs on top of LangGraph and checkpointing.

(b) Characters sent to the model, for a small and a large fleet with the same sites,
classes and versions (only the devices per group differ). Every message of every
call is recorded with a wrapper around the offline model; the bound tool schemas
are counted apart (they do not depend on the fleet). The rollout is driven to its
end: planner and validator, the approvals policy asks for, then the executor.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from pydantic import Field

from fieldgate.agents.offline import OfflineChatModel
from fieldgate.agents.offline.recording import RecordingModel, prompt_text
from fieldgate.audit import EventKind
from fieldgate.evals._world import World
from fieldgate.evals._world import open_run as open_world_run
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.runner import Orchestrator
from fieldgate.policy import RegoEngine
from fieldgate.scenario import Scenario, load_scenario, variant

SCENARIOS = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
"""The shared scenarios (``../shared/scenarios`` beside the repository)."""
ENGINE = RegoEngine()
"""The in-process Rego engine, loaded once (loading the pack takes a while)."""


def load(name: str) -> Scenario:
    """One shared scenario by file stem, e.g. ``safety-approval``."""
    return load_scenario(SCENARIOS / f"{name}.yaml")


def open_run(
    scenario: Scenario, db_url: str, model: OfflineChatModel
) -> AbstractContextManager[tuple[World, Orchestrator]]:
    """The scenario's world on ``db_url`` and an orchestrator over its checkpointer."""
    return open_world_run(scenario, db_url, ENGINE, model=model)


NODES = ["intake", "planner", "validator", "policy_gate", "approval", "queue", "executor", "report"]


class TimedModel(OfflineChatModel):
    """The offline model fieldgate runs by default, timing its calls (and nothing more)."""

    seconds: float = Field(default=0.0)
    """Time spent answering, summed over calls."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        began = time.perf_counter()
        try:
            return super()._generate(messages, stop, run_manager, **kwargs)
        finally:
            self.seconds += time.perf_counter() - began


class CountingModel(RecordingModel):
    """The recording offline model, also counting the tool schemas bound to each call."""

    tool_chars: list[int] = Field(default_factory=list)
    """Characters of the tool schemas bound to each call."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.tool_chars.append(len(json.dumps(kwargs.get("tools") or [])))
        return super()._generate(messages, stop, run_manager, **kwargs)


# --------------------------------------------------------------------------- (a) overhead


class BareState(TypedDict, total=False):
    """A state with fieldgate's keys, untyped."""

    request: str
    actor: str
    plan_id: str
    thread_id: str
    revisions: int
    feedback: list[str]
    plan: dict[str, Any]
    plan_hash: str
    approved: bool
    tokens: dict[str, Any]
    findings: dict[str, Any]
    dry_run: dict[str, Any]
    review: dict[str, Any]
    decision: dict[str, Any]
    approval_requested_at: str
    approvals: dict[str, Any]
    outcome: str


def bare_graph(sample: dict[str, Any], checkpointer: BaseCheckpointSaver[str]) -> Any:
    """Eight nodes wired like the rollout graph, returning slices of ``sample``."""

    def part(*keys: str) -> dict[str, Any]:
        return {k: sample[k] for k in keys if k in sample}

    def intake(state: BareState) -> dict[str, Any]:
        return {"revisions": 0, "feedback": []}

    def planner(state: BareState) -> dict[str, Any]:
        return part("plan", "plan_hash", "revisions", "feedback", "approved", "tokens")

    def validator(state: BareState) -> dict[str, Any]:
        return part("findings", "dry_run", "review")

    def policy_gate(state: BareState) -> dict[str, Any]:
        return part("decision", "approval_requested_at", "approvals")

    def approval(state: BareState) -> dict[str, Any]:
        answer = interrupt({"plan_hash": state.get("plan_hash"), "plan": state.get("plan")})
        return {"approved": bool(answer)}

    def queue(state: BareState) -> dict[str, Any]:
        return {}

    def executor(state: BareState) -> dict[str, Any]:
        return {"outcome": "completed"}

    def report(state: BareState) -> dict[str, Any]:
        return {}

    builder = StateGraph(BareState)
    for name, node in zip(
        NODES,
        [intake, planner, validator, policy_gate, approval, queue, executor, report],
        strict=True,
    ):
        builder.add_node(name, node)
    builder.add_edge(START, "intake")
    for left, right in itertools.pairwise(NODES):
        builder.add_edge(left, right)
    builder.add_edge("report", END)
    return builder.compile(checkpointer=checkpointer, interrupt_after=["queue"])


@dataclass
class Timings:
    """Wall and CPU seconds of each timed plan on one side."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def medians_ms(self) -> tuple[float, float]:
        return statistics.median(self.wall) * 1000, statistics.median(self.cpu) * 1000


def overhead(plans: int, warmup: int) -> None:
    """Median time from request to the approval interrupt: fieldgate beside a bare graph.

    The two sides alternate plan by plan, so that both see the same machine load.
    """
    scenario = variant(load("safety-approval"), approvals=[])
    workdir = Path(tempfile.mkdtemp(prefix="fg-bench-graph-"))
    model = TimedModel()
    ours, bare = Timings(), Timings()
    model_s: list[float] = []
    policy_ms: list[float] = []
    events_per_plan: list[int] = []
    with (
        open_run(scenario, f"sqlite:///{workdir}/fieldgate.db", model) as (world, orch),
        # What fieldgate opens for a SQLite database: a SqliteSaver on bare.checkpoints.sqlite.
        open_checkpointer(f"sqlite:///{workdir}/bare.db") as saver,
    ):
        sample = orch.submit(scenario.request, scenario.actor, plan_id="sample").values
        graph = bare_graph(sample, saver)
        for n in range(warmup + plans):
            plan_id = f"bench-{n:04d}"
            model.seconds = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            view = orch.submit(scenario.request, scenario.actor, plan_id=plan_id)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert view.status == "awaiting_approval", view.values.get("reasons")
            if n >= warmup:
                ours.add(wall, cpu)
                events = world.store.audit.events(plan_id=plan_id)
                model_s.append(model.seconds)
                policy_ms.append(
                    sum(
                        e.payload["latency_ms"]
                        for e in events
                        if e.kind is EventKind.policy_decision
                    )
                )
                events_per_plan.append(len(events))

            config: Any = {"configurable": {"thread_id": f"bare-{n:04d}"}}
            initial = {"request": scenario.request, "actor": scenario.actor, "plan_id": plan_id}
            wall, cpu = time.perf_counter(), time.process_time()
            graph.invoke(initial, config, durability="sync")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert graph.get_state(config).interrupts, "the bare graph did not stop at approval"
            if n >= warmup:
                bare.add(wall, cpu)

    ours_wall, ours_cpu = ours.medians_ms()
    bare_wall, bare_cpu = bare.medians_ms()
    print("(a) orchestration overhead per plan, request -> waiting for approval")
    print(f"    {plans} plans per side after {warmup} warm-up, the sides alternating; state")
    print("    checkpointed by SqliteSaver on a temp file (durability=sync); 5 of 8 nodes run,")
    print("    then the approval interrupt")
    side = "    {:<34} median {:7.1f} ms wall {:7.1f} ms CPU"
    print(side.format("fieldgate submit, offline model:", ours_wall, ours_cpu))
    print(
        f"      offline model, 2 calls:         median {statistics.median(model_s) * 1000:7.1f} ms"
    )
    print(f"      rollout policy, regopy:         median {statistics.median(policy_ms):7.1f} ms")
    print(f"      audit events appended:          {statistics.median(events_per_plan):7.0f}")
    print(side.format("bare LangGraph, same nodes/saver:", bare_wall, bare_cpu))
    print("      (its nodes return precomputed slices of a real fieldgate state: the same")
    print("       checkpoints, but no planning, validation, policy, audit or store writes)")
    print(
        f"    ratio fieldgate / bare: {ours_wall / bare_wall:.2f}x wall, "
        f"{ours_cpu / bare_cpu:.2f}x CPU (goal <= 3x)"
    )


# --------------------------------------------------------------------------- (b) characters


def scaled(per_group: int) -> Scenario:
    """safety-approval's two sites with two device classes, ``per_group`` devices each."""
    base = load("safety-approval")
    fleet = base.fleet.model_dump(mode="json", by_alias=True, exclude_none=True)
    hvac = fleet["generate"][0]
    pumps = {
        **hvac,
        "class": "pump-ctl",
        "installed": {"edge-runtime": "3.2.0", "pump-logic": "1.8.0"},
    }
    fleet["generate"] = [{**hvac, "per_site": per_group}, {**pumps, "per_site": per_group}]
    roster = {
        "eng-ana": ["engineer"],
        "saf-lee": ["safety"],
        "rm-kim": ["release-manager"],
        "cmp-ivo": ["compliance"],
    }
    return variant(base, id="scale", fleet=fleet, roster=roster, approvals=[], expect={})


def characters(devices: int) -> dict[str, Any]:
    """Drive one rollout on a fleet of ``devices`` devices; count what the model was sent."""
    per_group = devices // 4  # two sites x two classes
    scenario = scaled(per_group)
    workdir = Path(tempfile.mkdtemp(prefix="fg-bench-chars-"))
    model = CountingModel()
    with open_run(scenario, f"sqlite:///{workdir}/fieldgate.db", model) as (world, orch):
        view = orch.submit(scenario.request, scenario.actor, plan_id="chars")
        planning_calls = len(model.sent)
        for person in ("saf-lee", "rm-kim", "cmp-ivo"):
            if view.status == "awaiting_approval":
                view = orch.decide(view.thread_id, world.keys[person], "approve", "bench")
        view = orch.work(view.thread_id)
        sizes = [len(prompt_text(m)) for m in model.sent]
        return {
            "devices": len(world.scenario.fleet.all_devices()),
            "targets": view.values.get("findings", {}).get("targets"),
            "waves": view.values.get("findings", {}).get("wave_sizes"),
            "approvals": [(a["role"], a["count"]) for a in view.values["decision"]["approvals"]],
            "outcome": view.outcome,
            "reasons": view.values.get("reasons", []),
            "planning": sum(sizes[:planning_calls]),
            "planning_calls": planning_calls,
            "executor": sum(sizes[planning_calls:]),
            "executor_calls": len(sizes) - planning_calls,
            "tools": sum(model.tool_chars),
        }


def prompt_size(small: int, large: int) -> None:
    """Characters sent to the model for a small and a large fleet."""
    runs = [characters(small), characters(large)]
    print("(b) characters sent to the model (message text; tool schemas apart)")
    for run in runs:
        print(
            f"    {run['devices']:>6} devices: {run['targets']} targets in waves {run['waves']}, "
            f"approvals {run['approvals']}, outcome {run['outcome']}"
        )
        if run["outcome"] != "completed":
            print(f"           why: {'; '.join(run['reasons'])[:200]}")
        per_step = run["executor"] / max(run["executor_calls"], 1)
        print(
            f"           planner+validator {run['planning']:>6} chars in {run['planning_calls']} "
            f"calls; executor {run['executor']:>6} chars in {run['executor_calls']} calls "
            f"({per_step:.0f}/call); tool schemas {run['tools']} chars"
        )
    a, b = runs
    ratio = b["planning"] / a["planning"]
    print(f"    ratio planning (request -> approval), large/small: {ratio:.3f}")
    step_a = a["executor"] / max(a["executor_calls"], 1)
    step_b = b["executor"] / max(b["executor_calls"], 1)
    print(f"    ratio per executor call, large/small:              {step_b / step_a:.3f}")
    total_a, total_b = a["planning"] + a["executor"], b["planning"] + b["executor"]
    print(f"    ratio whole run, large/small:                      {total_b / total_a:.3f}")
    print("    (goal: within 10%; the large fleet's plan has more waves, so its executor")
    print("     takes more steps: compare per call and planning for the cost of one look)")


def main() -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=30, help="plans timed per side")
    parser.add_argument("--warmup", type=int, default=3, help="plans run first, not timed")
    parser.add_argument("--small", type=int, default=100, help="devices in the small fleet")
    parser.add_argument("--large", type=int, default=10_000, help="devices in the large fleet")
    args = parser.parse_args()
    overhead(args.plans, args.warmup)
    print()
    prompt_size(args.small, args.large)
    return 0


if __name__ == "__main__":
    sys.exit(main())

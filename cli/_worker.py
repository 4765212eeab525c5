"""``fieldgate worker``: execute approved runs wave by wave; expire overdue approval requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from fieldgate.cli._common import command_config
from fieldgate.cli._output import console, errors, handles_errors
from fieldgate.cli._rollout import (
    DbOption,
    ModelOption,
    approval_deadline,
    print_held,
    print_status,
    print_twin_clock,
    wave_counts,
    when,
)
from fieldgate.config import Config
from fieldgate.errors import FieldgateError
from fieldgate.runtime import Settings
from fieldgate.store import Run, Store
from fieldgate.terminal import shown
from fieldgate.tools import HOLD_LABELS

if TYPE_CHECKING:
    from fieldgate.graphs.runner import Orchestrator, RunView

WORK_STATUSES = ("queued", "executing", "held")
"""Runs a worker executes: approved and queued, left mid-way by a worker that stopped, or
held (taken up again once the hold lifts, or when a policy engine retry is due)."""


class WaveProgress:
    """A progress bar per wave, moved on after every executor step."""

    def __init__(self, values: dict[str, Any]) -> None:
        plan = values.get("plan") or {}
        sizes = (values.get("findings") or {}).get("wave_sizes") or []
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
        )
        self.tasks: list[TaskID] = [
            self.progress.add_task(
                f"wave {index + 1} {shown(wave.get('name'))}",
                total=sizes[index] if index < len(sizes) else None,
                note="[dim]pending[/]",
            )
            for index, wave in enumerate(plan.get("waves") or [])
        ]
        self.said: set[str] = set()
        self.rollback_version = (plan.get("rollback") or {}).get("version")
        execution = values.get("execution")
        if execution:
            self._show(execution)

    def __enter__(self) -> WaveProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def _say_once(self, key: str, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.progress.console.print(text, highlight=False)

    def on_update(self, node: str, update: dict[str, Any]) -> None:
        """Take one node's update (the executor's carry the execution state)."""
        if node == "executor" and update.get("execution"):
            self._show(update["execution"])

    def _show(self, execution: dict[str, Any]) -> None:
        for task, wave in zip(self.tasks, execution.get("waves") or [], strict=False):
            total, applied, failed, unreachable = wave_counts(wave)
            status = wave.get("status", "pending")
            colour = {"passed": "green", "failed": "red", "halted": "red"}.get(status, "dim")
            note = f"[{colour}]{status}[/]"
            if failed or unreachable:
                note += f" ({failed} failed, {unreachable} unreachable)"
            self.progress.update(task, total=total, completed=applied + failed + unreachable)
            self.progress.update(task, note=note)
        abort = execution.get("abort") or {}
        if abort.get("tripped"):
            self._say_once("abort", f"[bold red]abort:[/] {shown(abort.get('reason', ''))}")
        if execution.get("rolled_back"):
            back = len(execution.get("touched") or []) - len(execution.get("rollback_failed") or [])
            self._say_once(
                "rollback",
                f"[bold yellow]rolled back[/] {back} device(s) to {shown(self.rollback_version)}"
                + (
                    f"; not confirmed: {shown(', '.join(execution['rollback_failed']))}"
                    if execution.get("rollback_failed")
                    else ""
                ),
            )
        if execution.get("paused"):
            self._say_once("paused", "[bold yellow]paused[/]: dispatch stopped")
        held = execution.get("held")
        if held:
            label = HOLD_LABELS.get(str(held.get("kind")), "?")
            self._say_once(
                f"held:{held.get('kind')}:{held.get('attempts')}",
                f"[bold yellow]held by {label}[/]: {shown(held.get('reason', ''))}",
            )


@dataclass
class WorkDone:
    """What one pass of the worker did."""

    outcomes: dict[str, str] = field(default_factory=dict)
    """Plan id → outcome of each run executed (or where it stopped)."""
    expired: list[str] = field(default_factory=list)
    """Plans whose approval deadline passed."""
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Plan id → what holds each run the worker left alone (its hold has not lifted)."""

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.expired)


def execute(orchestrator: Orchestrator, run: Run) -> RunView:
    """Execute one queued run to its end, with a progress bar per wave."""
    view = orchestrator.view(run.thread_id)
    plan = view.values.get("plan") or {}
    console.rule(
        f"[bold]{shown(run.plan_id)}[/]: {shown(plan.get('module'))} {shown(plan.get('version'))}, "
        f"requested by {shown(run.actor)}",
        align="left",
    )
    with WaveProgress(view.values) as progress:
        view = orchestrator.work(run.thread_id, on_update=progress.on_update)
    print_status(view, orchestrator.ctx.store.runs.get(run.thread_id))
    print_twin_clock(orchestrator.ctx.store, run.plan_id)
    return view


def expire_overdue(orchestrator: Orchestrator) -> list[str]:
    """End the runs whose approval deadline passed (on the clock of people's time)."""
    expired = []
    now = orchestrator.ctx.people_now()
    for run in orchestrator.ctx.store.runs.list(("awaiting_approval",)):
        view = orchestrator.view(run.thread_id)
        deadline = approval_deadline(view)
        if deadline is None or now < datetime.fromisoformat(deadline):
            continue
        view = orchestrator.expire(run.thread_id)
        if view.outcome == "expired":
            expired.append(run.plan_id)
            console.print(
                f"[bold]{run.plan_id}:[/] [red]expired[/]: no quorum before {when(deadline)}",
                highlight=False,
            )
    return expired


def work_once(orchestrator: Orchestrator) -> WorkDone:
    """One pass: expire overdue approval requests, then execute every queued run and every
    held run whose hold lifted (or whose policy engine retry is due)."""
    from fieldgate.graphs.execution import due

    done = WorkDone(expired=expire_overdue(orchestrator))
    for run in orchestrator.ctx.store.runs.list(WORK_STATUSES):
        if run.status == "held":
            values = orchestrator.view(run.thread_id).values
            if not due(orchestrator.ctx, values, run):
                held = (values.get("execution") or {}).get("held") or run.detail.get("held")
                done.held[run.plan_id] = {**(held or {}), "unknown": run.detail.get("unknown")}
                continue
        try:
            view = execute(orchestrator, run)
        except FieldgateError as error:
            # One broken run must not stop the others; it stays open for the next pass.
            errors.print(
                f"[red]error: {run.plan_id}: {shown(error, multiline=True)}[/]", highlight=False
            )
            done.outcomes[run.plan_id] = "error"
            continue
        done.outcomes[run.plan_id] = view.outcome or view.status
    return done


def summary(done: WorkDone) -> str:
    """``executed 2 runs (1 completed, 1 rolled_back); expired 0``."""
    held = f"; {len(done.held)} still held" if done.held else ""
    if not done:
        if done.held:
            return f"nothing to do{held}"
        return "nothing to do: no run is queued and no approval request is overdue"
    counts: dict[str, int] = {}
    for outcome in done.outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    detail = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    runs = len(done.outcomes)
    return (
        f"executed {runs} run{'' if runs == 1 else 's'}"
        + (f" ({detail})" if detail else "")
        + f"; expired {len(done.expired)}"
        + held
    )


TransportOption = typer.Option(
    "twin", "--transport", help="twin (simulated devices) or mqtt (field agents)."
)
BrokerOption = typer.Option(
    None, "--broker", help="MQTT broker URL for --transport mqtt (default FIELDGATE_BROKER)."
)
GatewayOption = typer.Option(
    "fieldgate-gateway", "--gateway-id", help="MQTT client id of this worker's gateway."
)


MaxSoakOption = typer.Option(
    None,
    "--max-soak",
    min=0,
    help="Cap every wave's soak at this many seconds (soaks over MQTT take real time).",
)


def soak_settings(max_soak: float | None) -> Settings | None:
    """Run limits with every soak capped at ``max_soak`` seconds (None: the defaults)."""
    return None if max_soak is None else Settings(max_soak=timedelta(seconds=max_soak))


def check_transport(transport: str) -> None:
    """Refuse a transport fieldgate does not have."""
    if transport not in ("twin", "mqtt"):
        raise FieldgateError(f"--transport must be twin or mqtt, not {transport!r}")


def open_for(
    config: Config,
    transport: str,
    broker: str | None,
    gateway_id: str,
    settings: Settings | None = None,
) -> AbstractContextManager[Orchestrator]:
    """An orchestrator whose commands go to the twin or, over MQTT, to field agents."""
    from fieldgate.graphs.compose import open_orchestrator

    if transport == "mqtt":
        from fieldgate.cli._edge import broker_settings, open_mqtt_orchestrator

        return open_mqtt_orchestrator(
            config=config,
            settings=settings,
            broker=broker_settings(config, broker),
            client_id=gateway_id,
        )
    return open_orchestrator(config=config, settings=settings)


TWIN_TURN = "fleet-twin"
"""The lock workers on the twin take turns on."""


@contextmanager
def turn(config: Config, transport: str) -> Iterator[bool]:
    """Whether this worker may do a pass now. Field agents take several workers at once
    (each run is executed by one of them); the twin is one simulated world with one clock
    kept in the database, so workers on it take turns, a pass each. The turn is a lock
    that dies with its process (see ``RunStore.exclusive``)."""
    if transport != "twin":
        yield True
        return
    with Store.open(config.database_url) as store, store.runs.exclusive(TWIN_TURN) as mine:
        yield mine


@handles_errors
def worker(
    once: bool = typer.Option(False, "--once", help="Do one pass, say what was done, exit."),
    interval: float = typer.Option(
        3.0, "--interval", min=0.1, help="Seconds between passes (without --once)."
    ),
    model: str = ModelOption,
    db: str = DbOption,
    transport: str = TransportOption,
    broker: str = BrokerOption,
    gateway_id: str = GatewayOption,
    max_soak: float = MaxSoakOption,
) -> None:
    """Execute approved runs wave by wave and expire overdue approval requests.

    Without --once it polls until Ctrl-C; a run left mid-way continues from its checkpoint,
    a held run once its hold lifts, and one held by a policy engine error is retried with
    a wait that doubles each time (a bounded number of times; `fieldgate runs retry`).
    With --transport mqtt, commands go over the broker to `fieldgate agent` processes.
    """
    config = command_config(db, model)
    check_transport(transport)
    settings = soak_settings(max_soak)

    def opened() -> AbstractContextManager[Orchestrator]:
        return open_for(config, transport, broker, gateway_id, settings)

    if not once:
        console.print(f"worker: polling every {interval:g}s; Ctrl-C stops", highlight=False)
    try:
        while True:
            with turn(config, transport) as mine:
                if mine:
                    # A fresh orchestrator each pass: other processes move runs and the twin.
                    with opened() as orchestrator:
                        done = work_once(orchestrator)
            if not mine:  # another worker's pass on the twin
                time.sleep(min(interval, 0.2) if once else interval)
                continue
            if once:
                for plan_id, held in done.held.items():
                    print_held(plan_id, held, unknown=held.get("unknown") or ())
                console.print(f"worker: {summary(done)}", highlight=False)
                return
            if done:
                console.print(f"worker: {summary(done)}", highlight=False)
            time.sleep(interval)
    except KeyboardInterrupt:
        console.print("worker: stopped", highlight=False)

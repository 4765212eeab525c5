"""``fieldgate audit``: read, verify and export the audit log."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from fieldgate.audit import EventKind
from fieldgate.audit_witness import AnchorResult, AuditWitness, verify_anchored
from fieldgate.cli._common import command_config, open_store
from fieldgate.cli._output import EXIT_FAILED, console, handles_errors, json_option, print_view
from fieldgate.cli._rollout import refuse, twin_clock
from fieldgate.config import Config
from fieldgate.keyfiles import load_pinned_root
from fieldgate.store import Store, VerifyResult
from fieldgate.terminal import shown
from fieldgate.views import AuditShow

audit_app = typer.Typer(
    help="The audit log: show, verify, checkpoint, export.", no_args_is_help=True
)

DbOption = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB).")
WitnessOption = typer.Option(
    None,
    "--witness",
    help="The audit witness file (default: FIELDGATE_AUDIT_WITNESS, else "
    "FIELDGATE_HOME/audit-witness.jsonl).",
)


class ExportFormat(StrEnum):
    """Export formats."""

    jsonl = "jsonl"
    csv = "csv"


@audit_app.command("show")
@handles_errors
def show(
    plan: str = typer.Argument(None, help="Only this plan's events."),
    kind: list[EventKind] = typer.Option([], "--kind", help="Only these kinds."),
    limit: int = typer.Option(200, help="At most this many events (0: all)."),
    db: str = DbOption,
    json_: bool = json_option("audit-show"),
) -> None:
    """List audit events in order."""
    with open_store(db) as store:
        events = store.audit.events(plan_id=plan, kinds=kind or None, limit=limit or None)
    if json_:
        print_view(AuditShow(plan_id=plan, events=events))
        return
    table = Table(
        title=f"audit: {len(events)} events" + (f" of plan {shown(plan)}" if plan else "")
    )
    for column in ("seq", "time (UTC, wall clock)", "plan", "actor", "kind", "payload"):
        table.add_column(column, overflow="fold")
    for event in events:
        payload = json.dumps(event.payload, sort_keys=True)
        virtual = event.virtual_at()
        table.add_row(
            str(event.seq),
            f"{event.at:%Y-%m-%d %H:%M:%S}"
            + (f"\n[dim]{twin_clock(virtual, event.at)}[/]" if virtual else ""),
            shown(event.plan_id or "-"),
            f"{event.actor_kind.value}:{shown(event.actor)}",
            event.kind.value,
            shown(payload if len(payload) <= 160 else payload[:157] + "…"),
        )
    console.print(table)


def print_verification(result: VerifyResult) -> None:
    """Say whether the chain verified and, if not, where it breaks."""
    if result.ok:
        console.print(f"[green]audit chain ok[/]: {result.count} events verified")
    else:
        console.print(
            f"[bold red]audit chain broken at sequence {result.first_broken_seq}[/]: "
            f"{shown(result.reason)} ({result.count} events verified before it)",
            highlight=False,
        )


def _config(db: str | None, witness: Path | None) -> Config:
    config = command_config(db)
    return replace(config, audit_witness=witness) if witness else config


def print_anchoring(result: AnchorResult) -> None:
    """Say whether the chain verified against the witness and, if not, what was tampered."""
    if not result.chain.ok:
        print_verification(result.chain)
    elif result.ok:
        console.print(
            f"[green]audit chain ok[/]: {result.chain.count} events verified; {result.reason}",
            highlight=False,
        )
    else:
        console.print(f"[bold red]audit log tampered[/]: {result.reason}", highlight=False)


@audit_app.command("verify")
@handles_errors
def verify(db: str = DbOption, witness: Path = WitnessOption) -> None:
    """Walk the hash chain, then check it against the latest witnessed checkpoint.

    Names the first broken sequence number, events missing after a checkpoint, a
    rewrite the checkpoint's head hash no longer matches, a checkpoint whose signature
    does not verify with an enrolled control-plane key, a witness whose head moved
    backwards, and key rows that are forged, edited or unsigned. Exit 0 when all is well,
    1 when the log was tampered with, 2 when the witness file cannot be read.
    """
    config = _config(db, witness)
    root = load_pinned_root(config.trust_root_file)
    with Store.open(config.database_url) as store:
        result = verify_anchored(store, config.witness_path, root)
        trust = store.keys.judge(root) if root is not None else None
    print_anchoring(result)
    bad = [v for v in trust.verdicts if v.status == "bad"] if trust else []
    for verdict in bad:
        key = verdict.key
        console.print(
            f"[bold red]key row bad[/]: {key.key_id} ({shown(key.owner)}, {key.purpose}): "
            f"{shown(verdict.reason)}",
            highlight=False,
        )
    for problem in trust.root_problems if trust else []:
        console.print(f"[bold red]root of trust[/]: {shown(problem)}", highlight=False)
    if not result.ok or bad or (trust and trust.root_problems):
        raise typer.Exit(EXIT_FAILED)


@audit_app.command("checkpoint")
@handles_errors
def checkpoint(db: str = DbOption, witness: Path = WitnessOption) -> None:
    """Sign the chain's head with the control plane's key; keep it in the store and the witness.

    Refused (exit 1) when the chain no longer extends the last witnessed checkpoint.
    """
    config = _config(db, witness)
    with Store.open(config.database_url) as store:
        made = AuditWitness.from_config(config, store).checkpoint(store)
    where = config.witness_path
    console.print(
        f"checkpoint {made.checkpoint_id}: sequence {made.seq}, head {made.head_hash[:16]}…, "
        f"signed by {made.key_id}, witnessed in {where}",
        highlight=False,
    )


def _moment(value: str | None, option: str) -> datetime | None:
    """Read an ISO 8601 time or date given to ``option`` (naive: UTC); exit 2 when it is not."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        refuse(f"{option}: {value!r} is not an ISO 8601 time or date, e.g. 2026-12-03T08:00Z")
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


@audit_app.command("export")
@handles_errors
def export(
    fmt: ExportFormat = typer.Option(ExportFormat.jsonl, "--format", help="jsonl or csv."),
    plan: str = typer.Option(None, "--plan", help="Only this plan's events."),
    since: str = typer.Option(None, "--since", help="Only events at or after this time (UTC)."),
    until: str = typer.Option(None, "--until", help="Only events before this time (UTC)."),
    out: Path = typer.Option(None, "--out", help="Write here instead of standard output."),
    db: str = DbOption,
) -> None:
    """Export audit events in sequence order: JSON lines with their hashes, or CSV.

    Each JSON line is the whole event with its hash and the hash before it, so an exported
    range still verifies link by link. In CSV the payload is one canonical JSON cell, and a
    cell that a spreadsheet would run as a formula starts with a ' to keep it text.
    """
    low, high = _moment(since, "--since"), _moment(until, "--until")
    if low is not None and high is not None and high <= low:
        refuse(f"--until {until} is not after --since {since}")
    with open_store(db) as store:
        if out is None:
            store.audit.export(sys.stdout, fmt.value, plan, low, high)
            return
        partial = out.with_name(out.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8", newline="") as fp:
                count = store.audit.export(fp, fmt.value, plan, low, high)
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
    console.print(f"exported {count} events to {shown(out)} ({fmt.value})", highlight=False)

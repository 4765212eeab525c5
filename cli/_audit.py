"""``fieldgate audit``: read, verify and export the audit log."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from fieldgate.audit import EventKind
from fieldgate.cli._common import open_store
from fieldgate.cli._output import EXIT_FAILED, console, handles_errors
from fieldgate.store import VerifyResult
from fieldgate.terminal import shown

audit_app = typer.Typer(help="The audit log: show, verify, export.", no_args_is_help=True)

DbOption = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB).")


class ExportFormat(StrEnum):
    """Export formats."""

    jsonl = "jsonl"


@audit_app.command("show")
@handles_errors
def show(
    plan: str = typer.Argument(None, help="Only this plan's events."),
    kind: list[EventKind] = typer.Option([], "--kind", help="Only these kinds."),
    limit: int = typer.Option(200, help="At most this many events (0: all)."),
    db: str = DbOption,
) -> None:
    """List audit events in order."""
    with open_store(db) as store:
        events = store.audit.events(plan_id=plan, kinds=kind or None, limit=limit or None)
    table = Table(
        title=f"audit: {len(events)} events" + (f" of plan {shown(plan)}" if plan else "")
    )
    for column in ("seq", "time (UTC)", "plan", "actor", "kind", "payload"):
        table.add_column(column, overflow="fold")
    for event in events:
        payload = json.dumps(event.payload, sort_keys=True)
        table.add_row(
            str(event.seq),
            f"{event.at:%Y-%m-%d %H:%M:%S}",
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


@audit_app.command("verify")
@handles_errors
def verify(db: str = DbOption) -> None:
    """Walk the hash chain and name the first broken sequence number; exit 1 if broken."""
    with open_store(db) as store:
        result = store.audit.verify()
    print_verification(result)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


@audit_app.command("export")
@handles_errors
def export(
    fmt: ExportFormat = typer.Option(ExportFormat.jsonl, "--format", help="Export format."),
    out: Path = typer.Option(None, "--out", help="Write here instead of standard output."),
    db: str = DbOption,
) -> None:
    """Export every audit event, one JSON object a line, with its hashes."""
    with open_store(db) as store:
        if out is None:
            store.audit.export_jsonl(sys.stdout)
            return
        with out.open("w", encoding="utf-8") as fp:
            count = store.audit.export_jsonl(fp)
    console.print(f"exported {count} events to {out} ({fmt.value})")

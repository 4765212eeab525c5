"""``fieldgate init`` and ``fieldgate demo``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from fieldgate.audit import ActorKind, EventKind
from fieldgate.cli._audit import print_verification
from fieldgate.cli._common import current_user, open_store
from fieldgate.cli._fleet import print_summary
from fieldgate.cli._output import EXIT_FAILED, console, handles_errors
from fieldgate.sample import DEMO_FACTORY_OWNER, demo_factory_key, load_sample, sample_path
from fieldgate.store import Store


def load_sample_into(store: Store, actor: str) -> tuple[int, int]:
    """Trust the demo factory key and import the sample catalog and fleet.

    Returns:
        Manifests added and devices imported.
    """
    sample = load_sample()
    store.keys.trust(DEMO_FACTORY_OWNER, demo_factory_key().public_b64, "artifact")
    added = store.catalog.import_manifests(
        [(m, None) for m in sample.catalog.modules],
        source=str(sample_path("catalog.yaml")),
        actor=actor,
    )
    fleet = store.fleet.import_inventory(
        sample.fleet, source=str(sample_path("fleet.yaml")), actor=actor
    )
    return len(added.added), fleet.devices


@handles_errors
def init(
    db: str = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB)."),
    empty: bool = typer.Option(False, "--empty", help="Create the database without sample data."),
) -> None:
    """Create the database and load the shipped sample catalog and fleet."""
    with open_store(db) as store:
        where = store.engine.url.render_as_string(hide_password=True)
        if empty:
            console.print(f"database ready: {where}")
            return
        manifests, devices = load_sample_into(store, current_user())
        console.print(
            f"database ready: {where}\nsample loaded: {manifests} new manifests, {devices} devices",
            highlight=False,
        )


@handles_errors
def demo(
    keep: Path = typer.Option(
        None, "--keep", help="Use this SQLite file instead of a temporary one, and keep it."
    ),
) -> None:
    """Show fieldgate on the sample fleet in a temporary database (non-interactive)."""
    with tempfile.TemporaryDirectory(prefix="fieldgate-demo-") as tmp:
        path = keep or Path(tmp) / "demo.db"
        url = f"sqlite:///{path}"
        console.rule("[bold]fieldgate demo")
        console.print(f"database: {url}", highlight=False)
        with Store.open(url) as store:
            manifests, _ = load_sample_into(store, "demo")
            console.print(f"loaded the sample catalog ({manifests} manifests) and fleet")
            print_summary(store.fleet.summary())
            records = store.catalog.list()
            modules: dict[str, list[str]] = {}
            for record in records:
                modules.setdefault(record.manifest.name, []).append(record.manifest.version)
            console.print(f"[bold]catalog:[/] {len(records)} signed manifests")
            for name, versions in sorted(modules.items()):
                safety = store.catalog.get(name, versions[0]).safety.value
                console.print(f"  {name:18} {safety:8} {', '.join(versions)}", highlight=False)
            store.audit.append(
                EventKind.request,
                ActorKind.human,
                "demo",
                {"text": "show the sample fleet and catalog"},
            )
            result = store.audit.verify()
            print_verification(result)
        console.rule()
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)

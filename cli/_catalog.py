"""``fieldgate catalog``: import, publish, list and show module manifests.

A factory publishes its catalog as a TUF repository (``catalog publish``); the control
plane imports it (``catalog import DIR``), verified against the metadata it holds. YAML
files import as before; either way only enrolled factory keys make a manifest signed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.table import Table

from fieldgate.audit import EventKind
from fieldgate.catalog_metadata import import_repository, publish_repository
from fieldgate.cli._common import (
    audit_change,
    command_config,
    file_digest,
    open_store,
    read_catalog_file,
)
from fieldgate.cli._output import console, handles_errors, json_option, print_view
from fieldgate.contract import parse_version
from fieldgate.errors import FieldgateError
from fieldgate.keyfiles import load_key, load_pinned_root
from fieldgate.store import ImportResult, Store
from fieldgate.terminal import shown
from fieldgate.views import CatalogItem, CatalogList, CatalogRecordView, CatalogShow

catalog_app = typer.Typer(
    help="Module manifests: import, publish (factories), list, show.", no_args_is_help=True
)

DbOption = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB).")


@catalog_app.command("import")
@handles_errors
def import_(
    files: list[Path] = typer.Argument(
        ...,
        help="Catalog or manifest YAML files, or catalog repository directories (TUF).",
        exists=False,
    ),
    actor: str = typer.Option(None, "--as", help="Who imports (default: the current user)."),
    db: str = DbOption,
) -> None:
    """Import manifests; each file or repository in one transaction, nothing stored from a bad one.

    A directory is a catalog repository: its TUF metadata must verify (signed by enrolled
    factory keys to each role's threshold, not older than the metadata held, not expired)
    and every manifest target must match its length, sha256 and factory signature.
    """
    parsed = [(path, None if path.is_dir() else read_catalog_file(path)) for path in files]
    config = command_config(db)
    with Store.open(config.database_url) as store:
        factory = store.keys.judge(load_pinned_root(config.trust_root_file)).trusted_keys("factory")
        for path, manifests in parsed:
            who = actor or config.actor()
            details: dict[str, object]
            result: ImportResult
            if manifests is None:
                verified, result = import_repository(store, path, factory, who, datetime.now(UTC))
                details = {"repository": verified.repository, "versions": verified.versions}
            else:
                result = store.catalog.import_manifests(
                    [(m, None) for m in manifests],
                    source=str(path),
                    actor=who,
                    factory_keys=factory,
                )
                details = {"digest": file_digest(path)}
            audit_change(
                store,
                EventKind.catalog,
                who,
                {
                    "action": "import",
                    "source": str(path),
                    **details,
                    "added": result.added,
                    "unchanged": len(result.unchanged),
                },
            )
            console.print(
                f"{shown(path)}: {len(result.added)} added, {len(result.unchanged)} unchanged",
                highlight=False,
            )
            for ref in result.added:
                record = store.catalog.record(*ref.split("@", 1))
                if not record.signature_valid:
                    console.print(
                        f"  [yellow]warning:[/] {shown(ref)}: {shown(record.signature_note)}",
                        highlight=False,
                    )


@catalog_app.command("publish")
@handles_errors
def publish(
    catalog: Path = typer.Argument(..., help="The catalog (or manifest) YAML file to publish."),
    out: Path = typer.Option(..., "--out", help="The repository directory (made or updated)."),
    keys: list[str] = typer.Option(
        ...,
        "--key",
        help="A factory key owner (FIELDGATE_HOME/keys/OWNER.key); repeat for k of n. The "
        "first one signs the manifests.",
    ),
    threshold: int = typer.Option(1, "--threshold", help="How many keys must sign each role (k)."),
    expires: int = typer.Option(30, "--expires", help="Days until the metadata expires."),
    db: str = DbOption,
) -> None:
    """Publish a catalog as a TUF repository, as a factory (root, targets, snapshot, timestamp).

    Every manifest is signed by the first --key and listed as a target with its length and
    sha256; every role is signed by every --key. Publishing into the same directory again
    gives each role a higher version. The keys count at import only once root holders
    enrolled them: `fieldgate keys enroll OWNER --purpose factory --public-key KEY`.
    """
    if expires < 1:
        raise FieldgateError(f"--expires {expires}: metadata must live at least one day")
    manifests = read_catalog_file(catalog)
    config = command_config(db)
    signers = [load_key(config.keys_dir, owner) for owner in keys]
    signed = [m.signed_with(signers[0]) for m in manifests]
    published = publish_repository(
        out, signed, signers, threshold, timedelta(days=expires), datetime.now(UTC)
    )
    versions = ", ".join(f"{role} {n}" for role, n in published.versions.items())
    console.print(
        f"{shown(out)}: {len(published.targets)} manifests published, signed by "
        f"{shown(', '.join(keys))} ({threshold} of {len(keys)}); versions: {versions}",
        highlight=False,
    )


@catalog_app.command("list")
@handles_errors
def list_(db: str = DbOption, json_: bool = json_option("catalog-list")) -> None:
    """List modules with their versions, safety class and signature state."""
    with open_store(db) as store:
        records = store.catalog.list()
    records.sort(key=lambda r: (r.manifest.name, parse_version(r.manifest.version)))
    if json_:
        print_view(
            CatalogList(
                manifests=[
                    CatalogItem(
                        name=r.manifest.name,
                        version=r.manifest.version,
                        safety=r.manifest.safety.value,
                        device_classes=list(r.manifest.device_classes),
                        signature_valid=r.signature_valid,
                        digest_matches=r.digest_matches,
                    )
                    for r in records
                ]
            )
        )
        return
    table = Table(title=f"catalog: {len(records)} manifests")
    for column in ("module", "version", "safety", "classes", "signed", "digest"):
        table.add_column(column)
    for record in records:
        m = record.manifest
        table.add_row(
            shown(m.name),
            shown(m.version),
            m.safety.value,
            shown(", ".join(m.device_classes)),
            "[green]valid[/]" if record.signature_valid else "[red]no[/]",
            "[green]ok[/]" if record.digest_matches else "[red]mismatch[/]",
        )
    console.print(table)


@catalog_app.command("show")
@handles_errors
def show(
    name: str = typer.Argument(..., help="Module name."),
    version: str = typer.Argument(None, help="Version (default: every version)."),
    db: str = DbOption,
    json_: bool = json_option("catalog-show"),
) -> None:
    """Show manifests with signature check and provenance."""
    with open_store(db) as store:
        versions = [version] if version else store.catalog.versions(name)
        records = [store.catalog.record(name, v) for v in versions]
        if not records:
            store.catalog.record(name, "0")  # raises NotFound naming the module
    if json_:
        print_view(
            CatalogShow(
                name=name,
                manifests=[
                    CatalogRecordView(
                        manifest=r.manifest,
                        source=r.source,
                        actor=r.actor,
                        imported_at=r.imported_at,
                        observed_digest=r.observed_digest,
                        digest_matches=r.digest_matches,
                        signature_valid=r.signature_valid,
                        signature_note=r.signature_note,
                    )
                    for r in records
                ],
            )
        )
        return
    for record in records:
        m = record.manifest
        table = Table(title=shown(m.ref), show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_row("safety", m.safety.value)
        requires = ", ".join(f"{r.module} {r.range}" for r in m.requires)
        table.add_row("device classes", shown(", ".join(m.device_classes)))
        table.add_row("arch", shown(", ".join(m.arch)))
        table.add_row("min memory", f"{m.min_memory_mb} MiB")
        table.add_row("requires", shown(requires) or "-")
        table.add_row("downgrade allowed", "yes" if m.downgrade_allowed else "no")
        table.add_row("artifact", f"{shown(m.artifact.uri)}\n{shown(m.artifact.digest)}")
        table.add_row("signature", shown(record.signature_note))
        table.add_row(
            "digest check", "ok" if record.digest_matches else shown(record.observed_digest)
        )
        table.add_row(
            "imported", f"{record.imported_at:%Y-%m-%d %H:%M:%S} UTC by {shown(record.actor)}"
        )
        table.add_row("from", shown(record.source))
        table.add_row("description (untrusted)", shown(m.description, multiline=True) or "-")
        console.print(table)

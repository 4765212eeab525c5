"""``fieldgate fleet``: import, list, show and seed the fleet inventory; enroll device keys."""

from __future__ import annotations

import base64
import binascii
import difflib
from collections import Counter
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table

from fieldgate.audit import EventKind
from fieldgate.cli._common import (
    audit_change,
    command_config,
    file_digest,
    open_store,
    read_inventory_file,
)
from fieldgate.cli._output import console, handles_errors, json_option, print_view
from fieldgate.cli._rollout import refuse
from fieldgate.devices import enroll_devices
from fieldgate.errors import InputInvalid, NotFound
from fieldgate.fleet import Device, Site
from fieldgate.plan import Selector
from fieldgate.seeding import seed_fleet
from fieldgate.store import FleetSummary, Store
from fieldgate.terminal import shown
from fieldgate.views import DeviceKey, FleetList, FleetShow

fleet_app = typer.Typer(
    help="Sites and devices: import, list, show, seed; enroll device keys.", no_args_is_help=True
)

DbOption = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB).")


def print_summary(summary: FleetSummary) -> None:
    """Print device counts by region, site, class and installed version."""
    console.print(
        f"[bold]fleet:[/] {summary.devices} devices at {summary.sites} sites "
        f"in {len(summary.by_region)} regions",
        highlight=False,
    )
    table = Table(show_header=True)
    table.add_column("by region")
    table.add_column("by class")
    table.add_column("installed")
    regions = [f"{shown(k)}: {v}" for k, v in sorted(summary.by_region.items())]
    classes = [f"{shown(k)}: {v}" for k, v in sorted(summary.by_class.items())]
    installed = [
        f"{shown(module)} {shown(version)}: {count}"
        for module, versions in sorted(summary.installed.items())
        for version, count in sorted(versions.items())
    ]
    for row in range(max(len(regions), len(classes), len(installed))):
        cells = [col[row] if row < len(col) else "" for col in (regions, classes, installed)]
        table.add_row(*cells)
    console.print(table)


def _summary_of(devices: list[Device], sites: dict[str, Site]) -> FleetSummary:
    """The summary of some devices, counted as :meth:`FleetStore.summary` counts the fleet."""
    by_region: Counter[str] = Counter(sites[d.site].region for d in devices)
    by_site: Counter[str] = Counter(d.site for d in devices)
    by_class: Counter[str] = Counter(d.device_class for d in devices)
    installed: dict[str, Counter[str]] = {}
    for device in devices:
        for module, version in device.installed.items():
            installed.setdefault(module, Counter())[version] += 1
    return FleetSummary(
        sites=len(by_site),
        devices=len(devices),
        by_region=dict(by_region),
        by_site=dict(by_site),
        by_class=dict(by_class),
        installed={m: dict(c) for m, c in installed.items()},
    )


@fleet_app.command("import")
@handles_errors
def import_(
    files: list[Path] = typer.Argument(..., help="Fleet inventory YAML files."),
    actor: str = typer.Option(None, "--as", help="Who imports (default: the current user)."),
    db: str = DbOption,
) -> None:
    """Import sites and devices; each file in one transaction, nothing stored from a bad file."""
    parsed = [(path, read_inventory_file(path)) for path in files]
    config = command_config(db)
    with Store.open(config.database_url) as store:
        for path, inventory in parsed:
            who = actor or config.actor()
            result = store.fleet.import_inventory(inventory, source=str(path), actor=who)
            audit_change(
                store,
                EventKind.fleet,
                who,
                {
                    "action": "import",
                    "source": str(path),
                    "digest": file_digest(path),
                    "sites": result.sites,
                    "devices": result.devices,
                },
            )
            console.print(
                f"{shown(path)}: {result.sites} sites, {result.devices} devices", highlight=False
            )


@fleet_app.command("list")
@handles_errors
def list_(
    site: list[str] = typer.Option([], "--site", help="Only these sites."),
    region: list[str] = typer.Option([], "--region", help="Only these regions."),
    device_class: list[str] = typer.Option([], "--class", help="Only these device classes."),
    limit: int = typer.Option(50, help="Show at most this many devices (0: all)."),
    db: str = DbOption,
    json_: bool = json_option("fleet-list"),
) -> None:
    """List devices with their installed modules; a summary of those that match first.

    An unknown site, region or class is refused with the nearest known names: a typo
    never lists the whole fleet.
    """
    selector = Selector(sites=site, regions=region, classes=device_class)
    with open_store(db) as store:
        whole = store.fleet.summary()
        for option, asked, known in (
            ("--site", site, whole.by_site),
            ("--region", region, whole.by_region),
            ("--class", device_class, whole.by_class),
        ):
            for name in asked:
                if name not in known:
                    near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
                    hint = f"; did you mean {', '.join(near)}?" if near else ""
                    refuse(f"{option} {name!r}: no such name in the fleet{hint}")
        devices = store.fleet.devices(selector)
        sites = {s.id: s for s in store.fleet.sites()}
    filtered = bool(site or region or device_class)
    listed = devices if limit == 0 else devices[:limit]
    if json_:
        print_view(
            FleetList(
                summary=_summary_of(devices, sites) if filtered else whole,
                fleet_devices=whole.devices,
                matched=len(devices),
                devices=listed,
                truncated=len(listed) < len(devices),
            )
        )
        return
    print_summary(_summary_of(devices, sites) if filtered else whole)
    if filtered:
        console.print(f"  (of {whole.devices} devices in the fleet)", highlight=False)
    table = Table(title=f"{len(devices)} devices match")
    table.add_column("device", no_wrap=True)
    for column in ("site", "class", "arch", "memory", "installed"):
        table.add_column(column)
    for d in listed:
        installed = ", ".join(f"{m} {v}" for m, v in sorted(d.installed.items()))
        table.add_row(
            shown(d.id),
            shown(d.site),
            shown(d.device_class),
            shown(d.arch),
            f"{d.memory_mb} MiB",
            shown(installed),
        )
    console.print(table)
    if len(listed) < len(devices):
        console.print(f"… {len(devices) - len(listed)} more (use --limit 0 to see all)")


@fleet_app.command("show")
@handles_errors
def show(
    ident: str = typer.Argument(..., metavar="ID", help="A device id or a site id."),
    db: str = DbOption,
    json_: bool = json_option("fleet-show"),
) -> None:
    """Show one device, or one site with its devices."""
    with open_store(db) as store:
        sites = {s.id: s for s in store.fleet.sites()}
        if ident in sites:
            site = sites[ident]
            devices = store.fleet.devices(Selector(sites=[ident]))
            if json_:
                print_view(FleetShow(kind="site", site=site, devices=[d.id for d in devices]))
                return
            labels = ", ".join(f"{k}={v}" for k, v in sorted(site.labels.items()))
            console.print(
                f"[bold]{shown(site.id)}[/] {site.kind.value} site in {shown(site.region)}, "
                f"{shown(site.timezone)}, "
                f"maintenance {shown(', '.join(site.maintenance)) or 'none'}, "
                f"labels {shown(labels) or '-'}, {len(devices)} devices",
                highlight=False,
            )
            return
        try:
            device = store.fleet.device(ident)
        except NotFound:
            raise NotFound(f"no device or site named {ident!r}") from None
        enrollment = store.fleet.enrollment(device.id)
    document = device.model_dump(mode="json", by_alias=True)
    document["key"] = (
        {
            "key_id": enrollment.key_id,
            "public_key": enrollment.public_key,
            "enrolled_at": enrollment.enrolled_at.isoformat(),
            "enrolled_by": enrollment.enrolled_by,
        }
        if enrollment is not None
        else None
    )
    if json_:
        key = (
            DeviceKey(
                key_id=enrollment.key_id,
                public_key=enrollment.public_key,
                enrolled_at=enrollment.enrolled_at,
                enrolled_by=enrollment.enrolled_by,
            )
            if enrollment is not None
            else None
        )
        print_view(FleetShow(kind="device", device=device, site=sites.get(device.site), key=key))
        return
    console.print_json(data=_shown_data(document))


@fleet_app.command("enroll")
@handles_errors
def enroll(
    device_id: str = typer.Argument(..., metavar="DEVICE", help="The device's id."),
    public_key: str = typer.Option(
        ...,
        "--public-key",
        help="The device's ed25519 public key: base64, or a file holding it (@FILE or a path; "
        "a `DEVICE KEY` line as `python -m fieldgate.edge --print-key` prints will do).",
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Replace the key the device is enrolled with (audited)."
    ),
    actor: str = typer.Option(None, "--as", help="Who enrolls (default: the current user)."),
    db: str = DbOption,
) -> None:
    """Enroll a device's public key: only reports and hellos it signs count from then on."""
    key = read_public_key(device_id, public_key)
    config = command_config(db)
    who = actor or config.actor()
    with Store.open(config.database_url) as store:
        changed = enroll_devices(store, {device_id: key}, who, replace=replace)
        enrollment = store.fleet.enrollment(device_id)
    assert enrollment is not None
    if not changed:
        message = f"{shown(device_id)}: already enrolled with {enrollment.key_id}; nothing changed"
    elif changed[0].previous_key_id:
        message = (
            f"{shown(device_id)}: re-enrolled with {enrollment.key_id} "
            f"(was {changed[0].previous_key_id})"
        )
    else:
        message = f"{shown(device_id)}: enrolled with {enrollment.key_id}"
    console.print(message, highlight=False)


def read_public_key(device_id: str, value: str) -> str:
    """The base64 key ``--public-key`` names: given inline, or read from a file."""
    text = value.strip()
    path = Path(text[1:] if text.startswith("@") else text)
    if text.startswith("@") or (len(text) < 4096 and path.is_file()):
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputInvalid("--public-key", [("", f"cannot read {path}: {exc}")]) from None
        lines = [line.split() for line in text.splitlines() if line.strip()]
        mine = [parts[-1] for parts in lines if len(parts) == 2 and parts[0] == device_id]
        if mine:
            text = mine[0]
        elif len(lines) == 1 and len(lines[0]) == 1:
            text = lines[0][0]
        else:
            rule = f"{path} holds neither one key nor a `{device_id} KEY` line"
            raise InputInvalid("--public-key", [("", shown(rule, markup=False))])
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        rule = "not an ed25519 public key: 32 bytes in base64 (or a file holding one)"
        raise InputInvalid("--public-key", [("", rule)])
    return text


def _shown_data(value: Any) -> Any:
    # JSON escapes C0 controls itself, but not C1 or bidi controls: every string, keys too.
    if isinstance(value, str):
        return shown(value, markup=False)
    if isinstance(value, dict):
        return {_shown_data(k): _shown_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown_data(v) for v in value]
    return value


@fleet_app.command("seed")
@handles_errors
def seed(
    sites: int = typer.Option(..., "--sites", min=1, help="Number of sites."),
    devices_per_site: int = typer.Option(..., "--devices-per-site", min=1, help="Devices a site."),
    seed_value: int = typer.Option(0, "--seed", help="Random seed: the same seed, the same fleet."),
    out: Path = typer.Option(None, "--out", help="Write the inventory YAML here instead."),
    db: str = DbOption,
) -> None:
    """Generate a synthetic fleet and import it (or write it to a file)."""
    inventory = seed_fleet(sites, devices_per_site, seed_value)
    if out is not None:
        document = inventory.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        out.write_text(yaml.safe_dump(document, sort_keys=False))
        console.print(f"wrote {len(inventory.devices)} devices at {sites} sites to {out}")
        return
    config = command_config(db)
    with Store.open(config.database_url) as store:
        result = store.fleet.import_inventory(
            inventory, source=f"seed:{seed_value}", actor=config.actor()
        )
        audit_change(
            store,
            EventKind.fleet,
            config.actor(),
            {
                "action": "seed",
                "seed": seed_value,
                "sites": result.sites,
                "devices": result.devices,
            },
        )
        console.print(f"seeded {result.devices} devices at {result.sites} sites")
        print_summary(store.fleet.summary())

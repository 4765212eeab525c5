"""``fieldgate broker config``: a Mosquitto set-up in which each client reaches only its topics."""

from __future__ import annotations

import getpass
from pathlib import Path

import typer

from fieldgate.audit import EventKind
from fieldgate.cli._common import audit_change, command_config
from fieldgate.cli._edge import TopicRootOption
from fieldgate.cli._output import console, handles_errors
from fieldgate.config import BROKER_ENV, CREDENTIALS_ENV
from fieldgate.edge import GATEWAY_IDENTITY, write_broker_config
from fieldgate.errors import InputInvalid, NotFound
from fieldgate.plan import Selector
from fieldgate.store import Store

broker_app = typer.Typer(
    help="The MQTT broker: who may connect and which topics each may use.",
    no_args_is_help=True,
)


@broker_app.command("config")
@handles_errors
def config(
    out: Path = typer.Option(..., "--out", help="Directory to write the set-up into."),
    site: list[str] = typer.Option([], "--site", help="Only devices of these sites."),
    port: int = typer.Option(
        None, "--port", min=1, max=65535, help="Listener port (default 8883 with --tls, else 1883)."
    ),
    bind: str = typer.Option("127.0.0.1", "--bind", help="Address the listener binds to."),
    host: str = typer.Option(
        None, "--host", help="Name or address clients connect to (default: the bind address)."
    ),
    tls: bool = typer.Option(
        False, "--tls", help="TLS only (mqtts://), with a certificate from a CA made here."
    ),
    tls_name: list[str] = typer.Option(
        [], "--tls-name", help="Another name or address for the broker's certificate."
    ),
    rotate: bool = typer.Option(
        False, "--rotate", help="New passwords (and a new CA) for everyone, not the kept ones."
    ),
    run_as: str = typer.Option(
        None,
        "--run-as",
        help="System user Mosquitto runs as (`user` line; default: this user). It must "
        "read the files, which only their owner may.",
    ),
    topic_root: str = TopicRootOption,
    db: str = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB)."),
) -> None:
    """Write a Mosquitto 2.x set-up for the fleet: no anonymous clients, one identity each.

    Every device of the fleet (or of --site) gets an identity named by its device id and
    a random password; the control plane gets `fieldgate-gateway`. The ACL lets a device
    read only its own cmd and desired topics and write only its own report and hello
    topics, and the gateway write every cmd and desired and read every report and
    hello. Into --out go mosquitto.conf, the password file (salted hashes), the ACL and
    credentials/{identity}.json (0600) for the clients; with --tls a CA of this
    deployment, the broker's certificate and key. Passwords are never printed. Run it
    again after a fleet change: passwords are kept unless --rotate, devices no longer
    in the fleet lose their access. Audited.
    """
    settings = command_config(db)
    selector = Selector(sites=site)
    with Store.open(settings.database_url) as store:
        known = {s.id for s in store.fleet.sites()}
        unknown = [s for s in site if s not in known]
        if unknown:
            raise InputInvalid("--site", [("", f"no such site: {', '.join(unknown)}")])
        devices = [(d.site, d.id) for d in store.fleet.devices(selector)]
        if not devices:
            raise NotFound("the fleet has no devices to give an identity; run `fieldgate init`")
        setup = write_broker_config(
            out,
            devices,
            topic_root=topic_root,
            port=port,
            bind=bind,
            host=host,
            tls=tls,
            server_names=tls_name,
            rotate=rotate,
            run_as=run_as or getpass.getuser(),
        )
        audit_change(
            store,
            EventKind.broker,
            settings.actor(),
            {
                "action": "config",
                "directory": str(setup.directory),
                "identities": setup.identities,
                "kept": setup.kept,
                "rotated": rotate,
                "tls": tls,
                "sites": sorted(site),
                "url": setup.url,
            },
        )
    new = setup.identities - setup.kept
    console.print(
        f"broker config: {setup.identities} identities ({len(devices)} devices and "
        f"{GATEWAY_IDENTITY}; {setup.kept} passwords kept, {new} new) in {setup.directory}",
        highlight=False,
    )
    console.print(f"start the broker: mosquitto -c {setup.config_file}", highlight=False)
    console.print(
        f"clients: {BROKER_ENV}={setup.url} {CREDENTIALS_ENV}={setup.credentials}",
        highlight=False,
    )
    if setup.ca_file is not None:
        console.print(f"clients trust the CA {setup.ca_file}", highlight=False)

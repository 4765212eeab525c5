"""``fieldgate agent`` and ``fieldgate fleet up``: field agents over MQTT, and the worker's side."""

from __future__ import annotations

import base64
import binascii
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fieldgate.cli._common import open_store
from fieldgate.cli._output import console, errors, handles_errors
from fieldgate.config import home_dir
from fieldgate.edge import (
    AgentSpec,
    Broker,
    DeviceSpec,
    HelloWatcher,
    LocalFleet,
    open_agents,
    run_agents,
)
from fieldgate.errors import FieldgateError, InputInvalid, NotFound
from fieldgate.plan import Selector
from fieldgate.runtime import Settings
from fieldgate.signing import key_id_of
from fieldgate.store import Store
from fieldgate.transport import open_mqtt_transport

if TYPE_CHECKING:
    from fieldgate.graphs.runner import Orchestrator

BROKER_ENV = "FIELDGATE_BROKER"
"""Broker URL used when ``--broker`` is not given."""
CONTROL_KEY_ENV = "FIELDGATE_CONTROL_KEY"
"""The control plane's public key (base64) for agents, when ``--control-key`` is not given."""
PASSWORD_ENV = "FIELDGATE_MQTT_PASSWORD"
"""The broker password, when ``--password`` is not given."""
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"

BrokerOption = typer.Option(
    None, "--broker", help=f"mqtt://[USER@]HOST[:PORT] or mqtts://… (default: {BROKER_ENV})."
)
MqttVersionOption = typer.Option("5", "--mqtt-version", help="MQTT protocol: 5 or 3.1.1.")
CaFileOption = typer.Option(None, "--ca-file", help="CA bundle for the broker's TLS certificate.")
CertFileOption = typer.Option(None, "--cert-file", help="Client certificate (mutual TLS).")
KeyFileOption = typer.Option(None, "--key-file", help="Key of the client certificate.")
UsernameOption = typer.Option(None, "--username", help="Broker user name.")
PasswordOption = typer.Option(
    None, "--password", help=f"Broker password (better: set {PASSWORD_ENV})."
)
TopicRootOption = typer.Option("fieldgate", "--topic-root", help="First topic segment.")
StateOption = typer.Option(..., "--state", help="Directory of the devices' own SQLite stores.")
ApplySecondsOption = typer.Option(
    0.0, "--apply-seconds", min=0, help="How long a simulated install takes."
)
FailInstallOption = typer.Option(
    [], "--fail-install", help="MODULE@VERSION whose install fails (a simulated fault)."
)


def broker_settings(
    url: str | None,
    *,
    version: str = "5",
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    topic_root: str = "fieldgate",
) -> Broker:
    """The broker from a URL (``--broker``, else ``FIELDGATE_BROKER``) and the TLS/auth options."""
    return Broker.from_url(
        url or os.environ.get(BROKER_ENV) or DEFAULT_BROKER,
        version=version,
        ca_file=str(ca_file) if ca_file else None,
        cert_file=str(cert_file) if cert_file else None,
        key_file=str(key_file) if key_file else None,
        tls=True if ca_file or cert_file else None,
        username=username,
        password=password or os.environ.get(PASSWORD_ENV),
        topic_root=topic_root,
    )


def _control_key(value: str | None) -> str:
    """The control plane's public key from the option or the environment, checked."""
    text = value or os.environ.get(CONTROL_KEY_ENV)
    if not text:
        raise InputInvalid(
            "--control-key",
            [
                (
                    "",
                    "the agent needs the control plane's public key: pass --control-key "
                    f"BASE64 (or @FILE) or set {CONTROL_KEY_ENV}; keys are never trusted "
                    "on first use",
                )
            ],
        )
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text().strip()
        except OSError as exc:
            raise InputInvalid("--control-key", [("", f"cannot read {text[1:]}: {exc}")]) from None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise InputInvalid(
            "--control-key", [("", f"{text[:16]!r}… is not a base64 ed25519 public key")]
        )
    return text


def _modules(pairs: Sequence[str], what: str) -> dict[str, str]:
    modules = {}
    for pair in pairs:
        module, sep, version = pair.partition("=")
        if not sep or not module or not version:
            raise InputInvalid(what, [("", f"{pair!r} is not MODULE=VERSION")])
        modules[module] = version
    return modules


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


@handles_errors
def agent(
    device_id: list[str] = typer.Option(
        ..., "--device-id", help="Device to run (repeat to run several in this process)."
    ),
    state: Path = StateOption,
    broker_url: str = BrokerOption,
    control_key: str = typer.Option(
        None,
        "--control-key",
        help=f"Control plane's public key, base64 or @FILE (default: {CONTROL_KEY_ENV}).",
    ),
    replace_control_key: bool = typer.Option(
        False, "--replace-control-key", help="Replace the key pinned in the state (rotation)."
    ),
    site: str = typer.Option(None, "--site", help="The device's site (needed for new state)."),
    install: list[str] = typer.Option(
        [], "--install", help="MODULE=VERSION installed when the state is new."
    ),
    artifacts: Path = typer.Option(
        None, "--artifacts", help="Artifacts as DIR/MODULE/VERSION (default: sample stand-ins)."
    ),
    apply_seconds: float = ApplySecondsOption,
    fail_install: list[str] = FailInstallOption,
    mqtt_version: str = MqttVersionOption,
    ca_file: Path = CaFileOption,
    cert_file: Path = CertFileOption,
    key_file: Path = KeyFileOption,
    username: str = UsernameOption,
    password: str = PasswordOption,
    topic_root: str = TopicRootOption,
) -> None:
    """Run a field agent: take signed commands over MQTT, apply each once, report back.

    The device keeps its own SQLite store under --state (installed modules, the inbox of
    command ids with their results, the outbox of reports) and goes on working through
    broker restarts and lost links. Stop it with Ctrl-C or SIGTERM.
    """
    broker = broker_settings(
        broker_url,
        version=mqtt_version,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=username,
        password=password,
        topic_root=topic_root,
    )
    key = _control_key(control_key)
    modules = _modules(install, "--install")
    spec = AgentSpec(
        broker=broker,
        state_dir=state,
        control_key=key,
        replace_control_key=replace_control_key,
        devices=[DeviceSpec(device_id=d, site=site, installed=modules) for d in device_id],
        artifacts=artifacts,
        apply_seconds=apply_seconds,
        fail_installs=list(fail_install),
    )
    agents = open_agents(spec)
    stop = _stop_on_signals()
    console.print(
        f"agent: {', '.join(device_id)} → {broker.url} (topics {broker.topic_root}/…), "
        f"obeying control key {key_id_of(key)}; Ctrl-C stops",
        highlight=False,
    )
    run_agents(agents, stop)
    console.print("agent: stopped", highlight=False)


@handles_errors
def up(
    devices: int = typer.Option(..., "--devices", min=1, help="How many devices to run."),
    site: list[str] = typer.Option([], "--site", help="Only devices of these sites."),
    broker_url: str = BrokerOption,
    state: Path = typer.Option(
        None, "--state", help="Directory of the agents' state (default: FIELDGATE_HOME/agents)."
    ),
    per_process: int = typer.Option(10, "--per-process", min=1, help="Devices per process."),
    apply_seconds: float = ApplySecondsOption,
    fail_install: list[str] = FailInstallOption,
    control_key: str = typer.Option(
        None,
        "--control-key",
        help="Control plane's public key, base64 or @FILE (default: this machine's own).",
    ),
    mqtt_version: str = MqttVersionOption,
    ca_file: Path = CaFileOption,
    cert_file: Path = CertFileOption,
    key_file: Path = KeyFileOption,
    username: str = UsernameOption,
    password: str = PasswordOption,
    topic_root: str = TopicRootOption,
    db: str = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB)."),
) -> None:
    """Start agent processes for the first N devices of the fleet, for local runs.

    Each device starts from what the fleet inventory says it runs. Crashed processes are
    started again. Ctrl-C stops them all.
    """
    broker = broker_settings(
        broker_url,
        version=mqtt_version,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=username,
        password=password,
        topic_root=topic_root,
    )
    with open_store(db) as store:
        chosen = store.fleet.devices(Selector(sites=site, limit=devices))
        if not chosen:
            raise NotFound("the fleet has no devices to start; run `fieldgate init`")
        key = _control_key(control_key) if control_key else _own_control_key(store)
    specs = [DeviceSpec(device_id=d.id, site=d.site, installed=dict(d.installed)) for d in chosen]
    state_dir = state or home_dir() / "agents"
    fleet = LocalFleet(
        broker,
        state_dir,
        key,
        specs,
        per_process=per_process,
        apply_seconds=apply_seconds,
        fail_installs=fail_install,
        log_dir=state_dir / "logs",
    )
    stop = _stop_on_signals()
    console.print(
        f"fleet up: {len(specs)} devices in {len(fleet.groups)} processes → {broker.url}, "
        f"state in {state_dir}, obeying control key {key_id_of(key)}",
        highlight=False,
    )
    with fleet, HelloWatcher(broker) as watcher:
        started = time.monotonic()
        if watcher.wait(fleet.device_ids, timeout=60):
            console.print(
                f"fleet up: {len(specs)} devices online after "
                f"{time.monotonic() - started:.1f} s; Ctrl-C stops",
                highlight=False,
            )
        else:
            missing = len(set(fleet.device_ids) - watcher.online())
            errors.print(f"fleet up: {missing} devices did not come online within 60 s")
        while not stop.wait(1.0):
            for index in set(range(len(fleet.groups))) - set(fleet.alive()):
                errors.print(f"fleet up: agent process {index} ended; starting it again")
                fleet.start_group(index)
    console.print("fleet up: stopped", highlight=False)


def _own_control_key(store: Store) -> str:
    """This machine's control-plane key (made on first use, as the worker does)."""
    from fieldgate.graphs.context import control_key

    return control_key(store).public_b64


@contextmanager
def open_mqtt_orchestrator(
    db_url: str | None = None,
    model: str | None = None,
    freeze: bool = False,
    settings: Settings | None = None,
    *,
    broker: Broker | None = None,
    client_id: str = "fieldgate-gateway",
    connect_timeout: float = 10.0,
) -> Iterator[Orchestrator]:
    """``open_orchestrator`` with the MQTT transport: same arguments, plus the broker.

    The gateway refuses to publish a command that does not verify with the control
    plane's key, and the run fails closed when the broker cannot be reached.

    Args:
        db_url: Database URL (default: ``FIELDGATE_DB``).
        model: Model name (default: ``FIELDGATE_MODEL`` or the offline model).
        freeze: Whether a change freeze is in force.
        settings: Run limits (``max_soak`` caps soaks, which take real time here).
        broker: The broker (default: ``FIELDGATE_BROKER`` or mqtt://127.0.0.1:1883).
        client_id: The gateway's persistent session; one per worker.
        connect_timeout: Seconds to wait for the broker.

    Raises:
        BrokerUnreachable: the broker cannot be reached; nothing was sent.
    """
    from fieldgate.graphs.context import open_orchestrator
    from fieldgate.policy import PolicyGate

    broker = broker or broker_settings(None)
    with open_orchestrator(db_url, model, freeze, settings) as orchestrator:
        ctx = orchestrator.ctx
        with open_mqtt_transport(
            ctx.store,
            broker,
            control_key=ctx.control_key.public_b64,
            client_id=client_id,
            connect_timeout=connect_timeout,
        ) as transport:
            # The policy log takes the run's clock: the broker's wall clock, not the twin's.
            policy = PolicyGate(ctx.policy.engine, ctx.store.audit, clock=transport.now)
            orchestrator.ctx = replace(ctx, transport=transport, policy=policy)
            yield orchestrator


def start_local_fleet(
    store: Store,
    broker: Broker,
    state_dir: Path,
    *,
    selector: Selector | None = None,
    control_key: str | None = None,
    fail_installs: dict[str, list[str]] | None = None,
    per_process: int = 10,
    timeout: float = 60.0,
) -> LocalFleet:
    """Start agents for the devices ``selector`` picks and wait until they are online.

    For demos and local runs; the caller stops the returned fleet.

    Args:
        store: The control plane's database (devices, their sites and modules).
        broker: The broker the agents use.
        state_dir: Where their state goes.
        selector: Which devices (default: all).
        control_key: The key they obey (default: this machine's control-plane key).
        fail_installs: ``module@version`` refs whose install fails, by device id.
        per_process: Devices per process.
        timeout: Seconds to wait for every device to come online.

    Raises:
        FieldgateError: a device did not come online in time (the fleet is stopped).
    """
    failing = fail_installs or {}
    devices = store.fleet.devices(selector or Selector())
    specs = [
        DeviceSpec(
            device_id=d.id,
            site=d.site,
            installed=dict(d.installed),
            fail_installs=failing.get(d.id, []),
        )
        for d in devices
    ]
    key = control_key or _own_control_key(store)
    fleet = LocalFleet(
        broker, state_dir, key, specs, per_process=per_process, log_dir=state_dir / "logs"
    ).start()
    with HelloWatcher(broker) as watcher:
        if not watcher.wait(fleet.device_ids, timeout=timeout):
            fleet.stop()
            missing = len(set(fleet.device_ids) - watcher.online())
            raise FieldgateError(
                f"{missing} of {len(specs)} agents did not come online at {broker.url} "
                f"within {timeout:g} s (logs in {state_dir / 'logs'})"
            )
    return fleet


EDGE_DEMO_SETTINGS = Settings(wave_deadline=timedelta(minutes=2), max_soak=timedelta(seconds=2))
"""Run limits for demos over MQTT: soaks and waits take real time there."""


@contextmanager
def edge_demo(
    db_url: str,
    state_dir: Path,
    *,
    broker: Broker | None = None,
    selector: Selector | None = None,
    fail_installs: dict[str, list[str]] | None = None,
) -> Iterator[Callable[..., AbstractContextManager[Orchestrator]]]:
    """Start agents for the demo's devices; yield an opener to use instead of open_orchestrator.

    The opener takes ``open_orchestrator``'s arguments and runs the graph over MQTT with
    :data:`EDGE_DEMO_SETTINGS`. Only devices ``selector`` picks get agents: commands to
    others wait until the wave deadline, and maintenance windows are waited for in real
    time, so a demo over MQTT rolls out to ``schedule: now`` sites it started agents for.

    Raises:
        BrokerUnreachable: no broker answers at ``broker`` (default ``FIELDGATE_BROKER``).
    """
    from fieldgate.edge import BrokerUnreachable, reachable

    broker = broker or broker_settings(None)
    if not reachable(broker):
        raise BrokerUnreachable(
            f"no MQTT broker at {broker.url}; start one with `mosquitto -d` or set {BROKER_ENV}"
        )
    with Store.open(db_url) as store:
        fleet = start_local_fleet(
            store, broker, state_dir, selector=selector, fail_installs=fail_installs
        )
    try:
        yield partial(open_mqtt_orchestrator, broker=broker, settings=EDGE_DEMO_SETTINGS)
    finally:
        fleet.stop()

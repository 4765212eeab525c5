"""``fieldgate agent`` and ``fieldgate fleet up``: field agents over MQTT, and the worker's side."""

from __future__ import annotations

import base64
import binascii
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fieldgate.catalog_metadata import export_repository
from fieldgate.cli._common import command_config
from fieldgate.cli._output import console, errors, handles_errors
from fieldgate.config import BROKER_ENV, CONTROL_KEY_ENV, CREDENTIALS_ENV, PASSWORD_ENV, Config
from fieldgate.devices import enroll_devices
from fieldgate.edge import (
    GATEWAY_IDENTITY,
    AgentSpec,
    Broker,
    DeviceSpec,
    HelloWatcher,
    LocalFleet,
    as_identity,
    open_agents,
    run_agents,
)
from fieldgate.errors import FieldgateError, InputInvalid, NotFound
from fieldgate.keyfiles import control_plane_key
from fieldgate.plan import Selector
from fieldgate.runtime import Settings
from fieldgate.signing import SigningKey, key_id_of
from fieldgate.store import Store
from fieldgate.terminal import shown
from fieldgate.transport import Transport, open_mqtt_transport

if TYPE_CHECKING:
    from fieldgate.graphs.runner import Orchestrator

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
CredentialsOption = typer.Option(
    None,
    "--credentials",
    help=f"Directory of broker credentials from `fieldgate broker config` (default: "
    f"{CREDENTIALS_ENV}); each device connects as itself.",
)
StateOption = typer.Option(..., "--state", help="Directory of the devices' own SQLite stores.")
ApplySecondsOption = typer.Option(
    0.0, "--apply-seconds", min=0, help="How long a simulated install takes."
)
FailInstallOption = typer.Option(
    [], "--fail-install", help="MODULE@VERSION whose install fails (a simulated fault)."
)


TlsFiles = tuple[Path | None, Path | None, Path | None]
"""``--ca-file``, ``--cert-file`` and ``--key-file``."""


def broker_settings(
    config: Config,
    url: str | None = None,
    version: str = "5",
    tls: TlsFiles = (None, None, None),
    username: str | None = None,
    password: str | None = None,
    topic_root: str = "fieldgate",
    identity: str | None = GATEWAY_IDENTITY,
) -> Broker:
    """The broker from a URL (``--broker``, else ``config.broker_url``) and the TLS/auth options.

    With ``config.mqtt_credentials`` and neither ``--username`` nor ``--password``, the
    client connects as ``identity`` with the password of its credentials file.

    Args:
        config: The settings (broker URL and password when the options do not give them).
        url: ``--broker``.
        version: ``--mqtt-version``.
        tls: The CA bundle, client certificate and its key (:data:`TlsFiles`).
        username: ``--username``.
        password: ``--password`` (else ``config.mqtt_password``).
        topic_root: ``--topic-root``.
        identity: Who connects with credentials (None: nobody, e.g. field agents, which
            read their own).
    """
    ca_file, cert_file, key_file = tls
    broker = Broker.from_url(
        url or config.broker_url,
        version=version,
        ca_file=str(ca_file) if ca_file else None,
        cert_file=str(cert_file) if cert_file else None,
        key_file=str(key_file) if key_file else None,
        tls=True if ca_file or cert_file else None,
        username=username,
        password=password or config.mqtt_password,
        topic_root=topic_root,
    )
    given = username is not None or password is not None
    if identity is not None and not given and config.mqtt_credentials is not None:
        return as_identity(broker, config.mqtt_credentials, identity)
    return broker


def _control_key(value: str | None) -> str:
    """The control plane's public key from the option (or ``FIELDGATE_CONTROL_KEY``), checked."""
    text = value
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
        except (OSError, UnicodeDecodeError) as exc:
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
    credentials: Path = CredentialsOption,
    catalog: list[Path] = typer.Option(
        [],
        "--catalog",
        help="A catalog repository (TUF) to check every install against (repeat for more); "
        "its first root is pinned in the device's state the first time.",
    ),
) -> None:
    """Run a field agent: take signed commands over MQTT, apply each once, report back.

    The device keeps its own SQLite store under --state (installed modules, the inbox of
    command ids with their results, the outbox of reports) and goes on working through
    broker restarts and lost links. Stop it with Ctrl-C or SIGTERM.
    """
    config = command_config()
    tls = (ca_file, cert_file, key_file)
    broker = broker_settings(
        config, broker_url, mqtt_version, tls, username, password, topic_root, identity=None
    )
    key = _control_key(control_key or config.control_key)
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
        credentials=credentials or config.mqtt_credentials,
        catalogs=list(catalog),
    )
    agents = open_agents(spec)
    stop = _stop_on_signals()
    console.print(
        f"agent: {', '.join(device_id)} → {broker.url} (topics {broker.topic_root}/…), "
        f"obeying control key {key_id_of(key)}; Ctrl-C stops",
        highlight=False,
    )
    for one in agents:
        public = one.device.store.public_key
        console.print(
            f"agent: {shown(one.device_id)} signs with {key_id_of(public)}; enroll it with "
            f"`fieldgate fleet enroll {shown(one.device_id)} --public-key {public}`",
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
    re_enroll: bool = typer.Option(
        False,
        "--re-enroll",
        help="Re-enroll devices whose state has another key than the fleet's (audited).",
    ),
    mqtt_version: str = MqttVersionOption,
    ca_file: Path = CaFileOption,
    cert_file: Path = CertFileOption,
    key_file: Path = KeyFileOption,
    username: str = UsernameOption,
    password: str = PasswordOption,
    topic_root: str = TopicRootOption,
    credentials: Path = CredentialsOption,
    db: str = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB)."),
) -> None:
    """Start agent processes for the first N devices of the fleet, for local runs.

    Each device starts from what the fleet inventory says it runs, and its key is enrolled
    in the fleet (audited). Crashed processes are started again. Ctrl-C stops them all.
    """
    config = command_config(db)
    tls = (ca_file, cert_file, key_file)
    broker = broker_settings(config, broker_url, mqtt_version, tls, username, password, topic_root)
    with Store.open(config.database_url) as store:
        chosen = store.fleet.devices(Selector(sites=site, limit=devices))
        if not chosen:
            raise NotFound("the fleet has no devices to start; run `fieldgate init`")
        if control_key:
            key = _control_key(control_key)
        else:  # this machine's, made on first use, as the worker does
            key = control_plane_key(store, config.keys_dir).public_b64
    specs = [DeviceSpec(device_id=d.id, site=d.site, installed=dict(d.installed)) for d in chosen]
    state_dir = state or config.home / "agents"
    with Store.open(config.database_url) as store:
        # The devices check their installs against the catalog this control plane verified.
        catalogs = export_repository(store, state_dir / "catalog")
        fleet = LocalFleet(
            broker,
            state_dir,
            key,
            specs,
            per_process=per_process,
            apply_seconds=apply_seconds,
            fail_installs=fail_install,
            log_dir=state_dir / "logs",
            credentials=credentials or config.mqtt_credentials,
            catalogs=catalogs,
        )
        enrolled = enroll_devices(store, fleet.public_keys(), config.actor(), replace=re_enroll)
    if enrolled:
        console.print(f"fleet up: enrolled the keys of {len(enrolled)} devices", highlight=False)
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


@contextmanager
def open_mqtt_orchestrator(
    db_url: str | None = None,
    model: str | None = None,
    *,
    config: Config | None = None,
    settings: Settings | None = None,
    broker: Broker | None = None,
    client_id: str = "fieldgate-gateway",
    connect_timeout: float = 10.0,
) -> Iterator[Orchestrator]:
    """``open_orchestrator`` with the MQTT transport: same arguments, plus the broker.

    The gateway refuses to publish a command that does not verify with the control
    plane's key, and the run fails closed when the broker cannot be reached.

    Args:
        db_url: Database URL (default: ``config``'s).
        model: Model name (default: ``config``'s).
        config: The settings (default: :meth:`Config.from_env`).
        settings: Run limits (``max_soak`` caps soaks, which take real time here).
        broker: The broker (default: ``config.broker_url``).
        client_id: The gateway's persistent session; one per worker.
        connect_timeout: Seconds to wait for the broker.

    Raises:
        BrokerUnreachable: the broker cannot be reached; nothing was sent.
    """
    from fieldgate.graphs.compose import open_orchestrator

    config = (config or command_config()).choosing(db=db_url, model=model)
    mqtt_broker = broker or broker_settings(config)

    def open_transport(store: Store, key: SigningKey) -> AbstractContextManager[Transport]:
        # The run's clock, and the policy log's, is then the broker's wall clock.
        return open_mqtt_transport(
            store,
            mqtt_broker,
            control_key=key.public_b64,
            client_id=client_id,
            connect_timeout=connect_timeout,
            max_clock_skew=config.device_clock_skew_s,
        )

    with open_orchestrator(
        config=config, settings=settings, open_transport=open_transport
    ) as orchestrator:
        yield orchestrator


def start_local_fleet(
    store: Store,
    broker: Broker,
    state_dir: Path,
    *,
    control_key: str,
    selector: Selector | None = None,
    fail_installs: dict[str, list[str]] | None = None,
    per_process: int = 10,
    timeout: float = 60.0,
    replace_keys: bool = False,
    credentials: Path | None = None,
) -> LocalFleet:
    """Start agents for the devices ``selector`` picks and wait until they are online.

    For demos and local runs; the caller stops the returned fleet.

    Args:
        store: The control plane's database (devices, their sites and modules).
        broker: The broker the agents use.
        state_dir: Where their state goes.
        control_key: The public key they obey.
        selector: Which devices (default: all).
        fail_installs: ``module@version`` refs whose install fails, by device id.
        per_process: Devices per process.
        timeout: Seconds to wait for every device to come online.
        replace_keys: Re-enroll devices whose state has another key than the fleet's.
        credentials: Directory of the devices' broker credentials (None: ``broker``'s user).

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
    fleet = LocalFleet(
        broker,
        state_dir,
        control_key,
        specs,
        per_process=per_process,
        log_dir=state_dir / "logs",
        enroll_in=store,
        replace_keys=replace_keys,
        credentials=credentials,
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
    config: Config | None = None,
    broker: Broker | None = None,
    selector: Selector | None = None,
    fail_installs: dict[str, list[str]] | None = None,
) -> Iterator[Callable[..., AbstractContextManager[Orchestrator]]]:
    """Start agents for the demo's devices; yield an opener to use instead of open_orchestrator.

    The opener takes ``open_orchestrator``'s arguments and runs the graph over MQTT with
    :data:`EDGE_DEMO_SETTINGS`. Only devices ``selector`` picks get agents: commands to
    others wait until the wave deadline, and maintenance windows are waited for in real
    time, so a demo over MQTT rolls out to ``schedule: now`` sites it started agents for.
    The agents obey this machine's control-plane key (under ``config``'s home, default
    :meth:`Config.from_env`).

    Raises:
        BrokerUnreachable: no broker answers at ``broker`` (default ``FIELDGATE_BROKER``).
    """
    from fieldgate.edge import BrokerUnreachable, reachable

    config = config or command_config()
    broker = broker or broker_settings(config)
    if not reachable(broker):
        raise BrokerUnreachable(
            f"no MQTT broker at {broker.url}; start one with `mosquitto -d` or set {BROKER_ENV}"
        )
    with Store.open(db_url) as store:
        key = control_plane_key(store, config.keys_dir).public_b64
        fleet = start_local_fleet(
            store,
            broker,
            state_dir,
            control_key=key,
            selector=selector,
            fail_installs=fail_installs,
            credentials=config.mqtt_credentials,
        )
    try:
        yield partial(
            open_mqtt_orchestrator, config=config, broker=broker, settings=EDGE_DEMO_SETTINGS
        )
    finally:
        fleet.stop()

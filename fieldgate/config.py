"""The one place that reads the environment: :class:`Config` and :meth:`Config.from_env`.

Everything else takes a ``Config`` (or the values in it); commands read the environment
once per invocation, the served graph once per process.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from fieldgate.errors import ConfigInvalid, ModelUnavailable

DEFAULT_MODEL = "offline"
DEFAULT_MODEL_TIMEOUT_S = 60.0
DEFAULT_DEVICE_CLOCK_SKEW_S = 30.0
"""Seconds a device's clock may run ahead of the control plane's before its input is refused."""
CLOCK_SKEW_ENV = "FIELDGATE_DEVICE_CLOCK_SKEW"
"""Seconds one model request may take before the client gives up on it."""
DEFAULT_MODEL_RETRIES = 2
"""Retries of a request that timed out, was rate limited or hit a server error."""
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_CHECKPOINT_EVERY = 1000
"""Audit events between two signed checkpoints of the chain's head."""
WITNESS_FILE = "audit-witness.jsonl"
"""Name of the audit witness file under ``FIELDGATE_HOME``."""

BROKER_ENV = "FIELDGATE_BROKER"
"""Broker URL used when ``--broker`` is not given."""
CONTROL_KEY_ENV = "FIELDGATE_CONTROL_KEY"
"""The control plane's public key (base64) for agents, when ``--control-key`` is not given."""
WITNESS_ENV = "FIELDGATE_AUDIT_WITNESS"
"""The audit witness file, in place of ``HOME/audit-witness.jsonl``."""
CHECKPOINT_EVERY_ENV = "FIELDGATE_AUDIT_CHECKPOINT_EVERY"
"""Audit events between two signed checkpoints."""
POLICY_ENGINES = ("regorus", "regopy", "opa")
"""Engines ``FIELDGATE_POLICY_ENGINE`` names: two in-process, and an OPA server."""
DEFAULT_POLICY_ENGINE = "regorus"
"""The fastest engine that passes the conformance suite (see the README)."""
PASSWORD_ENV = "FIELDGATE_MQTT_PASSWORD"
"""The broker password, when ``--password`` is not given (and how agent processes get it)."""
CREDENTIALS_ENV = "FIELDGATE_MQTT_CREDENTIALS"
"""The directory of broker credentials files written by ``fieldgate broker config``."""
COMMAND_WINDOWS_ENV = "FIELDGATE_COMMAND_WINDOWS"
"""Maintenance windows an install may start in (see ``Settings.command_windows``)."""
DEFAULT_COMMAND_WINDOWS = 2
"""The window an install is sent in and the next one: a device offline through the first
picks it up in the second."""
MOST_COMMAND_WINDOWS = 12
"""The most windows one command may wait through (a quarter of weekly windows): a signed
install stays valid until its last window closes."""


def _default_home() -> Path:
    return Path.home() / ".fieldgate"


@dataclass(frozen=True)
class Config:
    """fieldgate's settings; :meth:`from_env` reads them, the defaults are the fields'."""

    home: Path = field(default_factory=_default_home)
    """``FIELDGATE_HOME``: local state (the default database, keys); ``~/.fieldgate``."""
    db: str | None = None
    """``FIELDGATE_DB``: the database URL; None: a SQLite file under :attr:`home`."""
    user: str | None = None
    """``FIELDGATE_USER``: who runs the command; None: the login name (:meth:`actor`)."""
    model: str = DEFAULT_MODEL
    """``FIELDGATE_MODEL``: the model every agent uses, ``offline`` or ``openai:NAME``."""
    model_timeout_s: float = DEFAULT_MODEL_TIMEOUT_S
    """``FIELDGATE_MODEL_TIMEOUT``: seconds one request to an ``openai:NAME`` model may take."""
    model_retries: int = DEFAULT_MODEL_RETRIES
    """``FIELDGATE_MODEL_RETRIES``: retries of a timeout, dropped connection, 429 or 5xx."""
    openai_base_url: str | None = None
    """``OPENAI_BASE_URL``: the OpenAI-compatible endpoint; None: OpenAI's own."""
    openai_api_key: str | None = None
    """``OPENAI_API_KEY``: the endpoint's key (local servers usually take any)."""
    roster: dict[str, list[str]] = field(default_factory=dict)
    """``FIELDGATE_ROSTER``: roles by person, read from that JSON file; empty: the pack's."""
    freeze: bool = False
    """``FIELDGATE_FREEZE``: ``1`` when a change freeze is in force."""
    confirm: bool = True
    """``FIELDGATE_CONFIRM``: ``0`` queues a chat's plan that needs no approvals at once;
    otherwise it waits for the requester's yes (as ``chat --yes`` does not)."""
    broker_url: str = DEFAULT_BROKER
    """``FIELDGATE_BROKER``: the MQTT broker, ``mqtt://`` or ``mqtts://``."""
    mqtt_password: str | None = None
    """``FIELDGATE_MQTT_PASSWORD``: the broker password."""
    mqtt_credentials: Path | None = None
    """``FIELDGATE_MQTT_CREDENTIALS``: the directory of broker credentials files
    (``{identity}.json``, from ``fieldgate broker config``); the gateway connects as
    ``fieldgate-gateway``, field agents as their device. None: :attr:`mqtt_password`."""
    control_key: str | None = None
    """``FIELDGATE_CONTROL_KEY``: the control plane's public key a field agent obeys
    (base64 or ``@FILE``, checked where it is used)."""
    audit_witness: Path | None = None
    """``FIELDGATE_AUDIT_WITNESS``: the append-only file outside the database that signed
    checkpoints of the audit chain go to; None: ``HOME/audit-witness.jsonl``."""
    audit_checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    """``FIELDGATE_AUDIT_CHECKPOINT_EVERY``: audit events between two checkpoints."""
    device_clock_skew_s: float = DEFAULT_DEVICE_CLOCK_SKEW_S
    """``FIELDGATE_DEVICE_CLOCK_SKEW``: seconds a device's report or hello may be stamped
    ahead of the gateway's clock before it is refused."""
    policy_engine: str = DEFAULT_POLICY_ENGINE
    """``FIELDGATE_POLICY_ENGINE``: ``regorus`` or ``regopy`` (in-process), or ``opa``
    (the OPA server at ``OPA_URL``, which must then be set)."""
    opa_url: str | None = None
    """``OPA_URL``: the OPA server the ``opa`` engine evaluates on."""
    policy_crosscheck: bool = False
    """``FIELDGATE_POLICY_CROSSCHECK``: ``1`` also evaluates the decisions on plans of safety
    class critical on a second in-process engine, and denies when the two disagree."""
    command_windows: int = DEFAULT_COMMAND_WINDOWS
    """``FIELDGATE_COMMAND_WINDOWS``: maintenance windows an install of a ``schedule:
    maintenance`` plan may start in, from 1 to :data:`MOST_COMMAND_WINDOWS` (the run
    setting ``Settings.command_windows`` of every run the command line executes)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read the settings from ``environ`` (default: the process environment).

        Raises:
            ConfigInvalid: a variable holds a value that cannot be used (named in the
                message with the rule).
            ModelUnavailable: the model timeout or retries are not numbers it can use.
        """
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            return env.get(name) or None

        home = text("FIELDGATE_HOME")
        return cls(
            home=Path(home) if home else _default_home(),
            db=text("FIELDGATE_DB"),
            user=text("FIELDGATE_USER"),
            model=text("FIELDGATE_MODEL") or DEFAULT_MODEL,
            model_timeout_s=_timeout(env.get("FIELDGATE_MODEL_TIMEOUT", "")),
            model_retries=_retries(env.get("FIELDGATE_MODEL_RETRIES", "")),
            openai_base_url=text("OPENAI_BASE_URL"),
            openai_api_key=text("OPENAI_API_KEY"),
            roster=_roster(text("FIELDGATE_ROSTER")),
            freeze=env.get("FIELDGATE_FREEZE", "") == "1",
            confirm=env.get("FIELDGATE_CONFIRM", "") != "0",
            broker_url=text(BROKER_ENV) or DEFAULT_BROKER,
            mqtt_password=text(PASSWORD_ENV),
            mqtt_credentials=Path(creds) if (creds := text(CREDENTIALS_ENV)) else None,
            control_key=text(CONTROL_KEY_ENV),
            audit_witness=Path(witness) if (witness := text(WITNESS_ENV)) else None,
            audit_checkpoint_every=_checkpoint_every(env.get(CHECKPOINT_EVERY_ENV, "")),
            device_clock_skew_s=_clock_skew(env.get(CLOCK_SKEW_ENV, "")),
            policy_engine=_policy_engine(env.get("FIELDGATE_POLICY_ENGINE", ""), text("OPA_URL")),
            opa_url=text("OPA_URL"),
            policy_crosscheck=env.get("FIELDGATE_POLICY_CROSSCHECK", "") == "1",
            command_windows=_command_windows(env.get(COMMAND_WINDOWS_ENV, "")),
        )

    @property
    def database_url(self) -> str:
        """The database URL: :attr:`db`, else ``sqlite:///HOME/fieldgate.db``."""
        return self.db or f"sqlite:///{self.home / 'fieldgate.db'}"

    @property
    def keys_dir(self) -> Path:
        """Where private keys of this machine live (``HOME/keys``)."""
        return self.home / "keys"

    @property
    def trust_root_file(self) -> Path:
        """The pinned root of trust every command starts from (``HOME/trust-root.json``)."""
        return self.home / "trust-root.json"

    @property
    def witness_path(self) -> Path:
        """The audit witness file: :attr:`audit_witness`, else ``HOME/audit-witness.jsonl``."""
        return self.audit_witness or self.home / WITNESS_FILE

    def actor(self) -> str:
        """Who runs the command: :attr:`user`, else the login name."""
        return self.user or getpass.getuser()

    def choosing(self, db: str | None = None, model: str | None = None) -> Config:
        """These settings with a command's ``--db`` and ``--model`` in place, when given."""
        return replace(self, db=db or self.db, model=model or self.model)


def _timeout(raw: str) -> float:
    raw = raw.strip()
    if not raw:
        return DEFAULT_MODEL_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ModelUnavailable(f"FIELDGATE_MODEL_TIMEOUT={raw!r}: expected seconds above 0")
    return seconds


def _count(raw: str) -> int | None:
    """``raw`` as a count (ASCII digits only: ``"²".isdigit()`` holds, ``int("²")`` fails)."""
    return int(raw) if raw.isascii() and raw.isdigit() else None


def _retries(raw: str) -> int:
    raw = raw.strip()
    if not raw:
        return DEFAULT_MODEL_RETRIES
    count = _count(raw)
    if count is None:
        raise ModelUnavailable(f"FIELDGATE_MODEL_RETRIES={raw!r}: expected a count of 0 or more")
    return count


def _clock_skew(raw: str) -> float:
    raw = raw.strip()
    if not raw:
        return DEFAULT_DEVICE_CLOCK_SKEW_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise ConfigInvalid(f"{CLOCK_SKEW_ENV}={raw!r}: expected seconds from 0 to 3600")
    return seconds


def _checkpoint_every(raw: str) -> int:
    raw = raw.strip()
    if not raw:
        return DEFAULT_CHECKPOINT_EVERY
    count = _count(raw)
    if not count:
        raise ConfigInvalid(
            f"FIELDGATE_AUDIT_CHECKPOINT_EVERY={raw!r}: expected a count of events above 0"
        )
    return count


def _command_windows(raw: str) -> int:
    raw = raw.strip()
    if not raw:
        return DEFAULT_COMMAND_WINDOWS
    count = _count(raw)
    if count is None or not 1 <= count <= MOST_COMMAND_WINDOWS:
        raise ConfigInvalid(
            f"{COMMAND_WINDOWS_ENV}={raw!r}: expected a count of windows from 1 to "
            f"{MOST_COMMAND_WINDOWS}"
        )
    return count


def _policy_engine(raw: str, opa_url: str | None) -> str:
    name = raw.strip().lower() or DEFAULT_POLICY_ENGINE
    if name not in POLICY_ENGINES:
        raise ConfigInvalid(
            f"FIELDGATE_POLICY_ENGINE={raw!r}: expected one of {', '.join(POLICY_ENGINES)}"
        )
    if name == "opa" and not opa_url:
        raise ConfigInvalid("FIELDGATE_POLICY_ENGINE=opa: OPA_URL must name the OPA server")
    return name


def _roster(path: str | None) -> dict[str, list[str]]:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not UTF-8, not JSON
        raise ConfigInvalid(f"FIELDGATE_ROSTER: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConfigInvalid(f"FIELDGATE_ROSTER: {path} must map people to lists of roles")
    return {str(k): [str(r) for r in v] for k, v in data.items()}

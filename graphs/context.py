"""The run context for the command line: the configured database, twin, policy and model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from fieldgate.agents.models import make_model, model_name_from_env
from fieldgate.config import database_url, home_dir
from fieldgate.errors import FieldgateError, NotFound
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.runner import Orchestrator
from fieldgate.policy import PolicyGate, RegoEngine
from fieldgate.runtime import Context, Settings
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.transport import TwinTransport
from fieldgate.twin import FleetTwin

TWIN_ID = "default"
CONTROL_PLANE = "control-plane"


def wall_clock() -> datetime:
    """The time now, in UTC."""
    return datetime.now(UTC)


def keys_dir() -> Path:
    """Where private keys of this machine live (``FIELDGATE_HOME/keys``)."""
    return home_dir() / "keys"


def _key_file(owner: str) -> Path:
    if not owner or "/" in owner or owner.startswith("."):
        raise FieldgateError(f"{owner!r} is not a valid key owner id")
    return keys_dir() / f"{owner}.key"


def save_key(key: SigningKey) -> Path:
    """Write a private key readable by its owner only."""
    path = _key_file(key.owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key.private_b64() + "\n")
    path.chmod(0o600)
    return path


def load_key(owner: str) -> SigningKey:
    """Read the private key of ``owner`` (made by ``fieldgate keys init --as OWNER``)."""
    path = _key_file(owner)
    if not path.exists():
        raise NotFound(f"no key for {owner!r} at {path}; run `fieldgate keys init --as {owner}`")
    return SigningKey.from_private_b64(owner, path.read_text().strip())


def control_key(store: Store) -> SigningKey:
    """The control plane's command-signing key, made and trusted on first use."""
    try:
        key = load_key(CONTROL_PLANE)
    except NotFound:
        key = SigningKey.generate(CONTROL_PLANE)
        save_key(key)
    store.keys.trust(CONTROL_PLANE, key.public_b64, "control-plane")
    return key


def roster_from_env() -> dict[str, list[str]]:
    """Roles by person from ``FIELDGATE_ROSTER`` (a JSON file); empty: the policy pack's."""
    path = os.environ.get("FIELDGATE_ROSTER")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FieldgateError(f"FIELDGATE_ROSTER: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise FieldgateError(f"FIELDGATE_ROSTER: {path} must map people to lists of roles")
    return {str(k): [str(r) for r in v] for k, v in data.items()}


def default_twin(store: Store, seed: int = 0) -> FleetTwin:
    """The fleet twin of the stored fleet, created on first use and continued after."""
    try:
        return FleetTwin.load(store.engine, TWIN_ID)
    except NotFound:
        devices = store.fleet.devices()
        if not devices:
            raise FieldgateError("the database has no fleet yet; run `fieldgate init`") from None
        return FleetTwin.create(
            store.engine, TWIN_ID, store.fleet.sites(), devices, seed, datetime.now(UTC)
        )


def twin_context(
    store: Store, model: str | None = None, freeze: bool = False, settings: Settings | None = None
) -> Context:
    """The run context over ``store``: its fleet twin, the shipped policy pack, the model."""
    name = model or model_name_from_env()
    transport = TwinTransport(default_twin(store))
    return Context(
        store=store,
        policy=PolicyGate(RegoEngine(), store.audit, clock=transport.now),
        transport=transport,
        model=make_model(name),
        control_key=control_key(store),
        roster=roster_from_env(),
        freeze=freeze or os.environ.get("FIELDGATE_FREEZE", "") == "1",
        model_name=name,
        settings=settings or Settings(),
        people_clock=wall_clock,
    )


@contextmanager
def open_orchestrator(
    db_url: str | None = None,
    model: str | None = None,
    freeze: bool = False,
    settings: Settings | None = None,
) -> Iterator[Orchestrator]:
    """Open the configured database, twin, policy engine and model; yield the orchestrator."""
    url = db_url or database_url()
    store = Store.open(url)
    try:
        ctx = twin_context(store, model, freeze, settings)
        with open_checkpointer(url) as checkpointer:
            yield Orchestrator(ctx, checkpointer)
    finally:
        store.close()


_SERVED: list[Context] = []


def served_context() -> Context:
    """The context of a graph served by a LangGraph API server (``langgraph.json``).

    The server runs the compiled graph with its own checkpointer and without a
    fieldgate context, so the nodes build one from the environment, once per process.
    """
    if not _SERVED:
        _SERVED.append(twin_context(Store.open(database_url())))
    return _SERVED[0]

"""The one composition root: a run :class:`Context` from a :class:`Config` and a store.

The command line, the worker, the served graph, the evals and the edge commands all
build their context with :func:`build_context`; each passes what it owns (the eval
its scenario's twin, keys and clocks; the edge commands their MQTT transport) and
takes the configured defaults for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache

from langchain_core.language_models import BaseChatModel

from fieldgate.agents.models import make_model
from fieldgate.audit import ActorKind, EventKind
from fieldgate.audit_witness import AuditWitness
from fieldgate.config import Config
from fieldgate.contract import canonical_json, sha256_hex
from fieldgate.devices import enroll_devices
from fieldgate.errors import FieldgateError, NotFound
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.runner import Orchestrator
from fieldgate.keyfiles import control_plane_key, load_pinned_root
from fieldgate.policy import PolicyEngine, PolicyGate, configured_engine
from fieldgate.runtime import Context, Settings
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.transport import Transport, TwinTransport
from fieldgate.trust import TrustRoot
from fieldgate.twin import FleetTwin

TWIN_ID = "default"
"""The fleet twin of the stored fleet, which the command line's runs act on."""

TransportOpener = Callable[[Store, SigningKey], AbstractContextManager[Transport]]
"""Opens a transport over the store that obeys the control plane's key (e.g. MQTT)."""


def wall_clock() -> datetime:
    """The time now, in UTC."""
    return datetime.now(UTC)


def default_twin(store: Store, seed: int = 0) -> FleetTwin:
    """The fleet twin of the stored fleet, created on first use and continued after.

    Its simulated devices sign their reports; the keys of those with no key enrolled yet
    are enrolled (audited). A device enrolled with a key of its own keeps it, and the
    twin's reports in its name are refused: the twin is not that device.
    """
    try:
        twin = FleetTwin.load(store.engine, TWIN_ID)
    except NotFound:
        devices = store.fleet.devices()
        if not devices:
            raise FieldgateError("the database has no fleet yet; run `fieldgate init`") from None
        twin = FleetTwin.create(
            store.engine, TWIN_ID, store.fleet.sites(), devices, seed, wall_clock()
        )
    keys = twin.public_keys()
    enrolled = store.fleet.device_keys(keys)
    unkeyed = {d: k for d, k in keys.items() if d not in enrolled}
    if unkeyed:
        enroll_devices(store, unkeyed, "twin", actor_kind=ActorKind.system)
    return twin


def build_context(
    config: Config,
    store: Store,
    *,
    transport: Transport | None = None,
    model: BaseChatModel | None = None,
    model_name: str | None = None,
    engine: PolicyEngine | None = None,
    control_key: SigningKey | None = None,
    roster: dict[str, list[str]] | None = None,
    freeze: bool | None = None,
    settings: Settings | None = None,
    people_clock: Callable[[], datetime] | None = wall_clock,
    root: TrustRoot | None = None,
    witness: AuditWitness | None = None,
) -> Context:
    """The run context over ``store``; what is not given comes from ``config``.

    Args:
        config: The settings (model, roster, freeze, where keys live).
        store: The database.
        transport: How commands reach devices (default: the stored fleet's twin).
        model: The chat model (default: built from ``model_name``).
        model_name: The model's name (default: ``config.model``).
        engine: The policy engine (default: ``config.policy_engine`` over the shipped pack).
        control_key: The key that signs commands (default: this machine's, made on
            first use under ``config.keys_dir``).
        roster: Roles by person (default: ``config.roster``).
        freeze: Whether a change freeze is in force (default: ``config.freeze``).
        settings: Run limits (default: :class:`Settings` with ``config``'s count of
            maintenance windows).
        people_clock: The clock of requests and approvals (default: the wall clock;
            None: the run's clock, as in scenarios).
        root: The root of trust (default: the one pinned under ``config.home``).
        witness: Checkpoints the audit log into the witness file at every run's end and
            every N events (default: none; :func:`configured_witness` makes the
            configured one).
    """
    name = model_name or config.model
    transport = transport or TwinTransport(default_twin(store))
    return Context(
        store=store,
        policy=PolicyGate(
            engine or configured_engine(config),
            store.audit,
            clock=people_clock or transport.now,
            virtual_clock=transport.now if transport.name == "twin" else None,
        ),
        transport=transport,
        model=model or make_model(name, config=config),
        control_key=control_key or control_plane_key(store, config.keys_dir),
        roster=config.roster if roster is None else roster,
        freeze=config.freeze if freeze is None else freeze,
        model_name=name,
        settings=settings or Settings(command_windows=config.command_windows),
        people_clock=people_clock,
        root=root or load_pinned_root(config.trust_root_file),
        witness=witness,
    )


def audit_settings(store: Store, config: Config) -> bool:
    """Audit the roster and the freeze this command runs with, when they differ from the
    last ones audited (a changed roster file, a freeze turned on); return whether they did.
    """
    settings = {"roster": config.roster, "freeze": config.freeze}
    digest = sha256_hex(canonical_json(settings))
    last = store.audit.events(kinds=[EventKind.settings])
    if last and last[-1].payload.get("digest") == digest:
        return False
    store.audit.append(
        EventKind.settings, ActorKind.human, config.actor(), {**settings, "digest": digest}
    )
    return True


def configured_witness(config: Config, store: Store) -> AuditWitness:
    """The audit witness ``config`` names, already counting appends to ``store``'s log."""
    witness = AuditWitness.from_config(config, store)
    witness.watch(store)
    return witness


@contextmanager
def open_orchestrator(
    db_url: str | None = None,
    model: str | None = None,
    *,
    config: Config | None = None,
    settings: Settings | None = None,
    open_transport: TransportOpener | None = None,
) -> Iterator[Orchestrator]:
    """Open the configured database, transport, policy engine and model; yield the orchestrator.

    Args:
        db_url: The database URL in place of ``config``'s.
        model: The model name in place of ``config``'s.
        config: The settings (default: :meth:`Config.from_env`).
        settings: Run limits; what ``config`` sets of them (the count of maintenance
            windows, ``FIELDGATE_COMMAND_WINDOWS``) replaces theirs.
        open_transport: Opens the transport (default: the stored fleet's twin).
    """
    config = (config or Config.from_env()).choosing(db=db_url, model=model)
    if settings is not None:
        settings = replace(settings, command_windows=config.command_windows)
    url = config.database_url
    with Store.open(url) as store:
        key = control_plane_key(store, config.keys_dir)
        witness = configured_witness(config, store)
        opened = open_transport(store, key) if open_transport else nullcontext(None)
        with opened as transport, open_checkpointer(url) as checkpointer:
            ctx = build_context(
                config,
                store,
                transport=transport,
                control_key=key,
                settings=settings,
                witness=witness,
            )
            audit_settings(store, config)
            yield Orchestrator(ctx, checkpointer)


@cache
def served_context() -> Context:
    """The context of a graph served by a LangGraph API server (``langgraph.json``).

    The server runs the compiled graph with its own checkpointer and without a
    fieldgate context, so the nodes build one from the environment, once per process.
    """
    config = Config.from_env()
    store = Store.open(config.database_url)
    return build_context(config, store, witness=configured_witness(config, store))

"""A scenario's world: its catalog, fleet, twin, roster and keys in a fresh store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from langchain_core.language_models import BaseChatModel

from fieldgate.agents.offline import OfflineChatModel
from fieldgate.audit import ActorKind
from fieldgate.config import Config
from fieldgate.devices import enroll_devices
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.compose import build_context
from fieldgate.graphs.runner import Orchestrator
from fieldgate.keyfiles import CONTROL_PLANE, enroll_with
from fieldgate.policy import PolicyEngine
from fieldgate.runtime import Context, Settings
from fieldgate.scenario import Scenario
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.transport import TwinTransport
from fieldgate.trust import TrustRoot, new_root
from fieldgate.twin import FleetTwin

FACTORY = "factory"


@dataclass
class World:
    """Everything one scenario run needs, built from the scenario alone."""

    scenario: Scenario
    seed: int
    store: Store
    twin: FleetTwin
    ctx: Context
    keys: dict[str, SigningKey] = field(default_factory=dict)
    """Approver keys by person (every roster member and every scripted approver)."""

    @property
    def plan_id(self) -> str:
        """The plan id of this run (deterministic: the same seed gives the same history)."""
        return f"{self.scenario.id}-s{self.seed}"

    @property
    def ticket(self) -> str | None:
        """Untrusted ticket text injected into the request, if any."""
        texts = [i.text for i in self.scenario.injections if i.field == "request_ticket"]
        return "\n".join(texts) or None


def build_world(
    scenario: Scenario,
    db_url: str,
    seed: int,
    model: BaseChatModel,
    engine: PolicyEngine,
    model_name: str = "offline",
    settings: Settings | None = None,
) -> World:
    """Create the store, catalog, fleet, twin and keys of ``scenario`` for one seeded run."""
    store = Store.open(db_url)
    root_key = _root_key(scenario, seed)
    root = scenario_root(scenario, seed)
    store.keys.add_root(root)
    # The scenario's own deterministic factory key, enrolled in this throwaway database only
    factory = SigningKey.from_seed(FACTORY, f"{scenario.id}:{seed}:factory".encode())
    enroll_with(store, root, root_key, FACTORY, "factory", factory.public_b64)
    descriptions = {
        i.module: i.text for i in scenario.injections if i.field == "manifest.description"
    }
    every_module = [
        i.text
        for i in scenario.injections
        if i.field == "manifest.description" and i.module is None
    ]
    manifests = []
    for entry in scenario.catalog:
        text = descriptions.get(entry.name) or (every_module[0] if every_module else None)
        if text is not None:
            entry = entry.model_copy(update={"description": text})
        manifest, observed = entry.to_manifest(factory)
        manifests.append((manifest, observed))
    store.catalog.import_manifests(
        manifests,
        source=f"scenario:{scenario.id}",
        actor="eval",
        factory_keys=store.keys.judge(root).trusted_keys("factory"),
    )
    store.fleet.import_inventory(scenario.fleet, source=f"scenario:{scenario.id}", actor="eval")
    twin = FleetTwin.from_scenario(store.engine, twin_id_of(scenario, seed), scenario, seed)
    # The simulated devices sign their reports as field agents do: enroll their keys.
    enroll_devices(store, twin.public_keys(), "twin", actor_kind=ActorKind.system)
    people = set(scenario.roster) | {a.by for a in scenario.approvals} | {scenario.actor}
    keys = {
        person: SigningKey.from_seed(person, f"{scenario.id}:{seed}:{person}".encode())
        for person in sorted(people)
    }
    for person, key in keys.items():
        enroll_with(store, root, root_key, person, "approver", key.public_b64)
    ctx = scenario_context(
        scenario,
        seed,
        store,
        TwinTransport(twin),
        model,
        engine,
        model_name=model_name,
        settings=settings,
    )
    enroll_with(store, root, root_key, CONTROL_PLANE, "control-plane", ctx.control_key.public_b64)
    return World(scenario, seed, store, twin, ctx, keys)


ROOT_HOLDER = "eval-root"
"""Who holds a scenario run's root key (nobody in any roster)."""

ROOT_AT = datetime(2026, 1, 1, tzinfo=UTC)
"""When every scenario run's root of trust was made (fixed: a rerun rebuilds the same)."""


def _root_key(scenario: Scenario, seed: int) -> SigningKey:
    return SigningKey.from_seed(ROOT_HOLDER, f"{scenario.id}:{seed}:root".encode())


def scenario_root(scenario: Scenario, seed: int) -> TrustRoot:
    """The root of trust of one seeded run of ``scenario``: one generated root key, which
    enrolls every person's approver key and the control plane's."""
    return new_root({ROOT_HOLDER: _root_key(scenario, seed)}, 1, ROOT_AT)


@contextmanager
def open_run(
    scenario: Scenario,
    db_url: str,
    engine: PolicyEngine,
    *,
    model: BaseChatModel | None = None,
    seed: int = 0,
    settings: Settings | None = None,
) -> Iterator[tuple[World, Orchestrator]]:
    """Build the scenario's world on ``db_url`` and an orchestrator with its checkpointer.

    The offline model answers unless ``model`` is given; the store closes on exit.
    """
    world = build_world(
        scenario, db_url, seed, model or OfflineChatModel(), engine, settings=settings
    )
    try:
        with open_checkpointer(db_url) as checkpointer:
            yield world, Orchestrator(world.ctx, checkpointer)
    finally:
        world.store.close()


def twin_id_of(scenario: Scenario, seed: int) -> str:
    """The id of the fleet twin of one seeded run of ``scenario``."""
    return f"{scenario.id}-s{seed}"


def scenario_context(
    scenario: Scenario,
    seed: int,
    store: Store,
    transport: TwinTransport | None = None,
    model: BaseChatModel | None = None,
    engine: PolicyEngine | None = None,
    *,
    model_name: str = "offline",
    settings: Settings | None = None,
) -> Context:
    """The run context of one seeded run of ``scenario`` over its store and twin.

    Everything is derived from the scenario and the seed, so a process that reopens a
    world made earlier (a restarted worker) gets the same control key and roster. No
    setting comes from the environment, and people live on the twin's time.

    Args:
        scenario: The scenario.
        seed: The seed of the run.
        store: The store ``build_world`` filled.
        transport: How commands reach devices (default: the run's stored twin).
        model: The chat model (default: the one ``model_name`` names).
        engine: The policy engine (default: the shipped pack in-process).
        model_name: The model's name, for audit and reports.
        settings: Run limits.
    """
    if transport is None:
        transport = TwinTransport(FleetTwin.load(store.engine, twin_id_of(scenario, seed)))
    return build_context(
        Config(),
        store,
        transport=transport,
        model=model,
        model_name=model_name,
        engine=engine,
        control_key=SigningKey.from_seed(CONTROL_PLANE, f"{scenario.id}:{seed}:control".encode()),
        roster={person: list(roles) for person, roles in scenario.roster.items()},
        freeze=scenario.context.freeze,
        settings=settings,
        people_clock=None,
        root=scenario_root(scenario, seed),
    )

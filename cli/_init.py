"""``fieldgate init`` and ``fieldgate demo``."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from fieldgate.audit import ActorKind, EventKind
from fieldgate.catalog_metadata import import_repository, publish_repository
from fieldgate.cli._audit import print_verification
from fieldgate.cli._common import audit_change, command_config, file_digest
from fieldgate.cli._fleet import print_summary
from fieldgate.cli._output import EXIT_FAILED, console, handles_errors
from fieldgate.config import DEFAULT_MODEL, Config
from fieldgate.edge._artifacts import sample_artifact
from fieldgate.errors import FieldgateError, NotFound
from fieldgate.keyfiles import enroll_with, establish_root, load_key, load_pinned_root
from fieldgate.manifest import ModuleManifest
from fieldgate.plan import Selector
from fieldgate.sample import SAMPLE_FACTORY_OWNER, SampleData, load_sample, sample_path
from fieldgate.scenario import Fault, FaultKind
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.terminal import shown

SAMPLE_EXPIRES = timedelta(days=365)
"""How long the sample catalog's TUF metadata lives (nobody can publish a newer one)."""


def _publish_sample(store: Store, config: Config, actor: str, sample: SampleData) -> list[str]:
    """Import the sample catalog through TUF metadata signed by a throwaway factory key.

    The key is made here, enrolled under the deployment's root with the root keys this home
    holds, signs the manifests and the metadata, and is then dropped without being written:
    nobody can sign anything more with it. The shipped file's own signatures (the public
    demo key) are replaced and never trusted.

    Returns:
        ``name@version`` of the manifests added.

    Raises:
        FieldgateError: this home holds too few root keys to enroll the throwaway key.
    """
    pinned = load_pinned_root(config.trust_root_file)
    if pinned is None:
        raise FieldgateError("loading the sample needs a root of trust; run `fieldgate init`")
    root = store.keys.judge(pinned).root or pinned
    throwaway = SigningKey.generate(SAMPLE_FACTORY_OWNER)
    trusted, lacking = False, f"no root key of {root.threshold} needed is in {config.keys_dir}"
    for holder in (k.holder for k in root.keys):
        try:
            signer = load_key(config.keys_dir, holder, root=True)
        except NotFound:
            continue
        if root.key(signer.key_id) is not None and not trusted:
            trusted, lacking = enroll_with(
                store, root, signer, SAMPLE_FACTORY_OWNER, "factory", throwaway.public_b64
            )
    if not trusted:
        raise FieldgateError(f"cannot enroll the sample's throwaway factory key: {lacking}")
    store.audit.append(
        EventKind.key,
        ActorKind.human,
        actor,
        {
            "action": "enroll",
            "owner": SAMPLE_FACTORY_OWNER,
            "purpose": "factory",
            "key_id": throwaway.key_id,
            "root_version": root.version,
            "trusted": True,
            "private_key": "discarded after signing the sample catalog",
        },
    )
    now = datetime.now(UTC)
    # The stand-in artifacts' sizes go in too, so that a device checks the length as well.
    signed = [_with_size(m).signed_with(throwaway) for m in sample.catalog.modules]
    factory = store.keys.judge(pinned).trusted_keys("factory")
    with tempfile.TemporaryDirectory(prefix="fieldgate-sample-") as tmp:
        publish_repository(Path(tmp), signed, [throwaway], 1, SAMPLE_EXPIRES, now)
        del throwaway, signed
        _, result = import_repository(
            store, Path(tmp), factory, actor, now, source=str(sample_path("catalog.yaml"))
        )
    return result.added


def _with_size(manifest: ModuleManifest) -> ModuleManifest:
    """The manifest with the size of its ``sample://`` stand-in artifact."""
    if not manifest.artifact.uri.startswith("sample://"):
        return manifest
    size = len(sample_artifact(manifest.name, manifest.version))
    artifact = manifest.artifact.model_copy(update={"size_bytes": size})
    return manifest.model_copy(update={"artifact": artifact})


def load_sample_into(store: Store, config: Config, actor: str) -> tuple[int, int]:
    """Import the sample catalog (through a throwaway factory key) and the sample fleet.

    The catalog is loaded once: when one of its manifests is already stored, it is not
    published again (a new throwaway key would make every manifest differ).

    Returns:
        Manifests added and devices imported.
    """
    sample = load_sample()
    catalog, inventory = sample_path("catalog.yaml"), sample_path("fleet.yaml")
    stored = {r.ref for r in store.catalog.list()}
    if stored & {m.ref for m in sample.catalog.modules}:
        added: list[str] = []
    else:
        added = _publish_sample(store, config, actor, sample)
    fleet = store.fleet.import_inventory(sample.fleet, source=str(inventory), actor=actor)
    for kind, path, counts in (
        (EventKind.catalog, catalog, {"added": added}),
        (EventKind.fleet, inventory, {"sites": fleet.sites, "devices": fleet.devices}),
    ):
        audit_change(
            store,
            kind,
            actor,
            {"action": "import", "source": str(path), "digest": file_digest(path), **counts},
        )
    return len(added), fleet.devices


@handles_errors
def init(
    db: str = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB)."),
    empty: bool = typer.Option(False, "--empty", help="Create the database without sample data."),
    holders: list[str] = typer.Option(
        None,
        "--root-holder",
        help="Who holds a root key (repeat for k of n; default: FIELDGATE_USER).",
    ),
    threshold: int = typer.Option(
        1, "--root-threshold", help="How many root holders must sign an enrollment (k)."
    ),
) -> None:
    """Create the database and the root of trust, and load the shipped sample catalog and fleet.

    The root of trust is made once: root keys for the holders (in FIELDGATE_HOME/keys, for
    each holder to keep in their own home), pinned in FIELDGATE_HOME/trust-root.json. Its
    holders enroll people's and factories' keys (`fieldgate keys enroll`); the control
    plane's is enrolled now. No built-in key is trusted: the sample catalog is signed again
    by a throwaway factory key, enrolled now and never written down.
    """
    config = command_config(db)
    with Store.open(config.database_url) as store:
        where = store.engine.url.render_as_string(hide_password=True)
        root, made = establish_root(
            store,
            config.keys_dir,
            config.trust_root_file,
            list(holders or [config.actor()]),
            threshold,
        )
        if made:
            store.audit.append(
                EventKind.key,
                ActorKind.human,
                config.actor(),
                {
                    "action": "init-root",
                    "version": root.version,
                    "threshold": root.threshold,
                    "holders": [k.holder for k in root.keys],
                    "key_ids": [k.key_id for k in root.keys],
                },
            )
        held = ", ".join(shown(k.holder) for k in root.keys)
        console.print(
            f"database ready: {where}\nroot of trust version {root.version} "
            f"({'made now' if made else 'pinned already'}): {root.threshold} of "
            f"{len(root.keys)} root keys ({held}), pinned in {config.trust_root_file}",
            highlight=False,
        )
        if empty:
            return
        manifests, devices = load_sample_into(store, config, config.actor())
        console.print(
            f"sample loaded: {manifests} new manifests, {devices} devices", highlight=False
        )


DEMO_REQUESTER = "eng-ana"
"""The release engineer of the demo (an engineer in the policy pack's roster)."""
DEMO_APPROVER = "saf-lee"
"""The safety approver of the demo (holds the safety role in the policy pack's roster)."""
DEMO_ROOT_HOLDER = "adm-root"
"""Who holds the demo's root key and enrolls the approvers' keys."""


def _demo_config(home: Path, url: str) -> Config:
    """The environment's settings with the demo's own home and database, and none of the
    settings that would change its story (roster, freeze, model)."""
    return replace(
        Config.from_env(), home=home, db=url, roster={}, freeze=False, model=DEFAULT_MODEL
    )


def _step(number: int, title: str) -> None:
    console.print()
    console.rule(f"[bold]{number}. {title}", align="left")


def _typed(text: str) -> None:
    console.print(f"[dim]$[/] [bold]{shown(text)}[/]", highlight=False)


def _installed(store: Store, site: str, module: str) -> str:
    """``24× 2.4.1`` for the devices at ``site`` that run ``module``."""
    counts: dict[str, int] = {}
    for device in store.fleet.devices(Selector(sites=[site])):
        if module in device.installed:
            version = device.installed[module]
            counts[version] = counts.get(version, 0) + 1
    text = ", ".join(f"{n}× {v}" for v, n in sorted(counts.items())) or "none"
    return f"{module} at {site} (fleet inventory): {text}"


def _demo_story(config: Config) -> bool:
    """The demo's steps, each about one screen; return whether the audit chain verified."""
    from fieldgate.cli._approvals import decide
    from fieldgate.cli._chat import submit_request
    from fieldgate.cli._keys import enroll_key, make_approver_key
    from fieldgate.cli._worker import summary, work_once
    from fieldgate.graphs.compose import default_twin, open_orchestrator

    url = config.database_url
    who = DEMO_REQUESTER
    console.rule("[bold]fieldgate demo")
    console.print(
        f"database {url}, keys in {config.keys_dir}; offline model, in-process policy engine, "
        "fleet twin on a virtual clock",
        highlight=False,
    )

    _step(1, "init: the root of trust, the sample catalog and fleet")
    _typed(f"FIELDGATE_USER={DEMO_ROOT_HOLDER} fieldgate init")
    with Store.open(url) as store:
        root, _ = establish_root(
            store, config.keys_dir, config.trust_root_file, [DEMO_ROOT_HOLDER], 1
        )
        console.print(
            f"root of trust version {root.version}: root key of {DEMO_ROOT_HOLDER} "
            f"{root.keys[0].key_id}; the control plane's key is enrolled under it",
            highlight=False,
        )
        manifests, _ = load_sample_into(store, config, "demo")
        console.print(f"loaded the sample catalog ({manifests} signed manifests) and fleet")
        print_summary(store.fleet.summary())
        modules: dict[str, list[str]] = {}
        for record in store.catalog.list():
            modules.setdefault(record.manifest.name, []).append(record.manifest.version)
        for name, versions in sorted(modules.items()):
            safety = store.catalog.get(name, versions[0]).safety.value
            console.print(f"  {name:18} {safety:8} {', '.join(versions)}", highlight=False)

    _step(2, "a vague request: the planner asks back")
    _typed(f"fieldgate chat --as {who}   › roll out the new version")
    with open_orchestrator(config=config) as orchestrator:
        submit_request(orchestrator, "roll out the new version", who)

    _step(3, "policy says no: a change freeze is in force (rule D9)")
    _typed(f"FIELDGATE_FREEZE=1 fieldgate chat --as {who}   › roll out pump-logic 1.9.0 to rtm-05")
    with open_orchestrator(config=replace(config, freeze=True)) as orchestrator:
        submit_request(orchestrator, "roll out pump-logic 1.9.0 to rtm-05", who)

    _step(4, "a safety-class module: the plan waits for a safety approval")
    _typed(f"fieldgate chat --as {who}   › Roll out hvac-controller 2.4.1 to muc-01")
    with open_orchestrator(config=config) as orchestrator:
        plan_id = submit_request(
            orchestrator, "Roll out hvac-controller 2.4.1 to muc-01", who
        ).plan_id

    _step(5, "approvals: the root holder enrolls keys; the requester's does not count")
    with Store.open(url) as store:
        for owner in (who, DEMO_APPROVER):
            _typed(f"fieldgate keys init --as {owner}")
            key, path = make_approver_key(config.keys_dir, owner)
            console.print(f"{key.key_id}: approver key of {owner} in {path}", highlight=False)
            _typed(f"fieldgate keys enroll {owner} --as {DEMO_ROOT_HOLDER}")
            trusted, _, _ = enroll_key(config, store, owner, "approver", DEMO_ROOT_HOLDER)
            console.print(
                f"enrolled by root holder {DEMO_ROOT_HOLDER}: "
                + ("trusted" if trusted else "not trusted"),
                highlight=False,
            )
    with open_orchestrator(config=config) as orchestrator:
        _typed(f"fieldgate approvals approve {plan_id} --as {who}")
        decide(orchestrator, plan_id, who, "approve", "looks fine to me", keys_dir=config.keys_dir)
        _typed(f"fieldgate approvals approve {plan_id} --as {DEMO_APPROVER}")
        decide(
            orchestrator,
            plan_id,
            DEMO_APPROVER,
            "approve",
            "maintenance window checked",
            keys_dir=config.keys_dir,
        )

    _step(6, "a worker executes it wave by wave, in muc-01's maintenance window")
    _typed("fieldgate worker --once")
    with open_orchestrator(config=config) as orchestrator:
        console.print(f"worker: {summary(work_once(orchestrator))}", highlight=False)
        console.print(_installed(orchestrator.ctx.store, "muc-01", "hvac-controller"))

    _step(7, "a canary fails: the rollout aborts and rolls back")
    _typed(f"fieldgate chat --as {who}   › Update air-quality-model to 1.2.0 at lyon-02")
    with open_orchestrator(config=config) as orchestrator:
        view = submit_request(orchestrator, "Update air-quality-model to 1.2.0 at lyon-02", who)
    with Store.open(url) as store:
        default_twin(store).add_faults([Fault(kind=FaultKind.install_fails, wave=1, count=1)])
    console.print(
        "[yellow]fault injected in the fleet twin:[/] one install in the first wave fails",
        highlight=False,
    )
    _typed("fieldgate worker --once")
    with open_orchestrator(config=config) as orchestrator:
        console.print(f"worker: {summary(work_once(orchestrator))}", highlight=False)
        console.print(_installed(orchestrator.ctx.store, "lyon-02", "air-quality-model"))
    console.print(f"why: `fieldgate chat` › /why {view.plan_id}", highlight=False)

    _step(8, "the audit trail")
    _typed("fieldgate audit verify")
    with Store.open(url) as store:
        kinds: dict[str, int] = {}
        for event in store.audit.events():
            kinds[event.kind.value] = kinds.get(event.kind.value, 0) + 1
        console.print(
            "events: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())),
            highlight=False,
        )
        result = store.audit.verify()
    print_verification(result)
    console.rule()
    return result.ok


def _mqtt_story(config: Config) -> bool:
    """The demo over a real MQTT broker: field agent processes install, one canary fails."""
    from fieldgate.cli._chat import submit_request
    from fieldgate.cli._edge import edge_demo
    from fieldgate.cli._worker import summary, work_once

    url = config.database_url
    who = DEMO_REQUESTER
    console.rule("[bold]fieldgate demo over MQTT")
    with Store.open(url) as store:
        establish_root(store, config.keys_dir, config.trust_root_file, [DEMO_ROOT_HOLDER], 1)
        load_sample_into(store, config, "demo")
    site = "lyon-02"
    first = f"{site}-env-sensor-01"
    console.print(
        f"starting field agent processes for the env sensors at {site}; "
        f"installs of air-quality-model 1.2.0 fail on {first}",
        highlight=False,
    )
    with edge_demo(
        url,
        config.home / "agents",
        config=config,
        selector=Selector(sites=[site], classes=["env-sensor"]),
        fail_installs={first: ["air-quality-model@1.2.0"]},
    ) as opener:
        _step(1, "a request: no approval needed, it is queued for a worker")
        _typed(f"fieldgate chat --as {who}   › Update air-quality-model to 1.2.0 at {site}")
        with opener(url, "offline") as orchestrator:
            submit_request(orchestrator, f"Update air-quality-model to 1.2.0 at {site}", who)
        _step(2, "a worker sends signed commands over MQTT; the canary fails and is rolled back")
        _typed("fieldgate worker --once --transport mqtt")
        with opener(url, "offline") as orchestrator:
            console.print(f"worker: {summary(work_once(orchestrator))}", highlight=False)
            console.print(_installed(orchestrator.ctx.store, site, "air-quality-model"))
    _step(3, "the audit trail")
    with Store.open(url) as store:
        result = store.audit.verify()
    print_verification(result)
    console.rule()
    return result.ok


@handles_errors
def demo(
    keep: Path = typer.Option(
        None, "--keep", help="Use this SQLite file instead of a temporary one, and keep it."
    ),
    transport: str = typer.Option(
        "twin",
        "--transport",
        help="twin (simulated devices) or mqtt (field agent processes over FIELDGATE_BROKER, "
        "default mqtt://127.0.0.1:1883).",
    ),
) -> None:
    """Show the whole story on the sample fleet in a temporary database (non-interactive).

    A question back, a denial, an approval (the requester's own does not count), execution
    wave by wave, a failed canary rolled back, and the audit chain verified.
    """
    with tempfile.TemporaryDirectory(prefix="fieldgate-demo-") as tmp:
        home = Path(tmp)
        path = keep or home / "demo.db"
        url = f"sqlite:///{path}"
        config = _demo_config(home, url)
        if transport == "mqtt":
            ok = _mqtt_story(config)
        elif transport == "twin":
            ok = _demo_story(config)
        else:
            raise FieldgateError(f"--transport must be twin or mqtt, not {transport!r}")
    if not ok:
        raise typer.Exit(EXIT_FAILED)

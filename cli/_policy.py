"""``fieldgate policy``: run the Rego tests, evaluate a plan, list the rules."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import typer
from rich.table import Table

from fieldgate.cli._common import command_config, read_catalog_file, read_inventory_file
from fieldgate.cli._output import EXIT_FAILED, console, handles_errors, json_option, print_view
from fieldgate.config import Config
from fieldgate.contract import load_yaml, read_yaml
from fieldgate.errors import InputInvalid, PlanInvalid
from fieldgate.fleet import Device, Site
from fieldgate.keyfiles import load_pinned_root
from fieldgate.manifest import ModuleManifest
from fieldgate.plan import RolloutPlan, select_devices
from fieldgate.policy import (
    ROLLOUT,
    ArtifactCheck,
    OpaServerEngine,
    PolicyEngine,
    PolicyGate,
    PolicyPack,
    RolloutDecision,
    RolloutInput,
    configured_engine,
    input_document,
    read_decision,
    rollout_input,
    verify_artifact,
)
from fieldgate.scenario import load_scenario
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.terminal import shown
from fieldgate.views import PolicyRuleItem, PolicyShow

policy_app = typer.Typer(
    help="The Rego policy pack: run its tests, evaluate a plan, list its rules.",
    no_args_is_help=True,
)

DirOption = typer.Option(
    None, "--dir", help="Policy directory (default: the pack shipped with fieldgate)."
)
OpaOption = typer.Option(
    None,
    "--opa-url",
    help="Evaluate on this OPA server instead of the engine FIELDGATE_POLICY_ENGINE names.",
)
SCENARIO_FACTORY = SigningKey.from_seed("factory", b"fieldgate-scenario-factory")
"""The key that signs a scenario's catalog when ``policy eval --scenario`` builds it."""


def _engine(directory: Path | None, opa_url: str | None) -> PolicyEngine:
    pack = PolicyPack.load(directory)
    if opa_url:
        return OpaServerEngine(opa_url, pack)
    return configured_engine(Config.from_env(), pack)


@policy_app.command("test")
@handles_errors
def test(
    directory: Path = DirOption,
    opa_url: str = OpaOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="List failing tests only."),
) -> None:
    """Run every test_* rule of the *_test.rego files; pass or fail per test.

    A file that does not compile fails with its file and line. Exit code 1 when a
    test fails or none was found.
    """
    results = _engine(directory, opa_url).test()
    failed = [r for r in results if not r.passed]
    for result in results:
        if result.passed and quiet:
            continue
        mark = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
        why = f": {shown(result.message)}" if result.message else ""
        console.print(f"{mark} {shown(result.where)} {shown(result.name)}{why}", highlight=False)
    passed = len(results) - len(failed)
    console.print(f"{passed} passed, {len(failed)} failed", highlight=False)
    if failed or not results:
        raise typer.Exit(EXIT_FAILED)


@policy_app.command("show")
@handles_errors
def show(directory: Path = DirOption, json_: bool = json_option("policy-show")) -> None:
    """List every rule of the pack in one line: id and name, what it requires, where it is."""
    pack = PolicyPack.load(directory)
    rules = pack.rules()
    if json_:
        print_view(
            PolicyShow(
                revision=str(pack.revision),
                files=list(pack.revision.files),
                rules=[
                    PolicyRuleItem(
                        title=r.title,
                        description=r.description,
                        file=r.file,
                        line=r.line,
                        package=r.package,
                        rule=r.rule,
                    )
                    for r in rules
                ],
            )
        )
        return
    width = max((len(r.title) for r in rules), default=0)
    for rule in rules:
        console.print(
            f"{shown(rule.title):<{width}}  {shown(rule.description)}  "
            f"[dim]({rule.file}:{rule.line} {rule.package}.{rule.rule})[/]",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"[dim]{len(rules)} rules, revision {pack.revision.short} "
        f"({', '.join(pack.revision.files)})[/]",
        highlight=False,
    )


@policy_app.command("eval")
@handles_errors
def eval_(
    plan_file: Path = typer.Option(..., "--plan", help="Rollout plan YAML (kind: RolloutPlan)."),
    fleet_file: Path = typer.Option(None, "--fleet", help="Fleet inventory YAML (with --catalog)."),
    catalog_file: Path = typer.Option(None, "--catalog", help="Catalog YAML (with --fleet)."),
    scenario_file: Path = typer.Option(
        None, "--scenario", help="Take fleet, catalog, time and freeze from a scenario file."
    ),
    db: str = typer.Option(
        None, "--db", help="Database URL when no files are given (default: FIELDGATE_DB)."
    ),
    now: datetime = typer.Option(
        None, "--now", help="Decision time, ISO 8601 (default: now; a scenario's clock)."
    ),
    freeze: bool = typer.Option(False, "--freeze", help="A change freeze is in force."),
    actor: str = typer.Option(None, "--as", help="Who asks (default: the plan's requester)."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
    directory: Path = DirOption,
    opa_url: str = OpaOption,
) -> None:
    """Evaluate the rollout decision for a plan and print it.

    The fleet and catalog come from --fleet and --catalog files, from a --scenario,
    or from the database (FIELDGATE_DB); with the database the decision is also
    written to the audit log. A catalog file's signatures are checked against the
    file's own signers (the store decides trust when the database is used).
    Exit code 0 when the plan is allowed, 1 when denied, 2 on bad input.
    """
    plan = load_yaml(plan_file, RolloutPlan, PlanInvalid)
    engine = _engine(directory, opa_url)
    when = _aware(now) if now else None
    if scenario_file is not None:
        scenario = load_scenario(scenario_file)
        devices = scenario.fleet.all_devices()
        sites = {s.id: s for s in scenario.fleet.sites}
        catalog: dict[tuple[str, str], ModuleManifest] = {}
        observed: dict[tuple[str, str], str] = {}
        for entry in scenario.catalog:
            manifest, digest = entry.to_manifest(SCENARIO_FACTORY)
            catalog[(manifest.name, manifest.version)] = manifest
            observed[(manifest.name, manifest.version)] = digest
        manifest = _manifest(plan, plan_file, catalog)
        check = verify_artifact(
            manifest,
            {SCENARIO_FACTORY.key_id: SCENARIO_FACTORY.public_b64},
            observed[(plan.module, plan.version)],
        )
        inp = _input(
            plan,
            manifest,
            check,
            devices,
            sites,
            catalog,
            actor or scenario.actor,
            when or scenario.context.now,
            freeze or scenario.context.freeze,
        )
        decision = _decide(engine, inp)
    elif fleet_file is not None or catalog_file is not None:
        if fleet_file is None or catalog_file is None:
            raise InputInvalid(
                "policy eval", [("--fleet/--catalog", "give both files, or neither")]
            )
        inventory = read_inventory_file(fleet_file)
        manifests = read_catalog_file(catalog_file)
        signers = _signers(catalog_file)
        catalog = {(m.name, m.version): m for m in manifests}
        manifest = _manifest(plan, plan_file, catalog)
        check = verify_artifact(manifest, signers, _observed_digest(manifest))
        inp = _input(
            plan,
            manifest,
            check,
            inventory.all_devices(),
            {s.id: s for s in inventory.sites},
            catalog,
            actor or plan.requested_by,
            when or datetime.now(UTC),
            freeze,
        )
        decision = _decide(engine, inp)
    else:
        config = command_config(db)
        with Store.open(config.database_url) as store:
            records = store.catalog.list()
            catalog = {(r.manifest.name, r.manifest.version): r.manifest for r in records}
            manifest = _manifest(plan, plan_file, catalog)
            record = store.catalog.record(plan.module, plan.version)
            # judged afresh, as the graph's gate does: a key trusted at import may be gone
            factory = store.keys.judge(load_pinned_root(config.trust_root_file))
            keys = {k: key.public_b64 for k, key in factory.trusted_keys("factory").items()}
            check = verify_artifact(manifest, keys, record.observed_digest)
            sites = {s.id: s for s in store.fleet.sites()}
            inp = _input(
                plan,
                manifest,
                check,
                store.fleet.devices(),
                sites,
                catalog,
                actor or plan.requested_by,
                when or datetime.now(UTC),
                freeze,
            )
            decision = PolicyGate(engine, store.audit, actor="fieldgate policy eval").rollout(inp)
    _print(plan, inp, decision, engine, as_json)
    if not decision.allow:
        raise typer.Exit(EXIT_FAILED)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _manifest(
    plan: RolloutPlan, plan_file: Path, catalog: dict[tuple[str, str], ModuleManifest]
) -> ModuleManifest:
    manifest = catalog.get((plan.module, plan.version))
    if manifest is None:
        known = sorted(v for (name, v) in catalog if name == plan.module)
        hint = f" (known: {', '.join(known)})" if known else ""
        raise PlanInvalid(str(plan_file), [("version", f"{plan.ref} is not in the catalog{hint}")])
    return manifest


def _signers(catalog_file: Path) -> dict[str, str]:
    document = read_yaml(catalog_file)
    signers = document.get("signers", {}) if isinstance(document, dict) else {}
    return {str(k): str(v) for k, v in signers.items()} if isinstance(signers, dict) else {}


def _observed_digest(manifest: ModuleManifest) -> str:
    """sha256 of a ``file://`` artifact; otherwise the declared digest stands (as in the store)."""
    uri = urlparse(manifest.artifact.uri)
    if uri.scheme != "file":
        return manifest.artifact.digest
    digest = hashlib.sha256()
    try:
        with Path(unquote(uri.path)).open("rb") as artifact:
            while chunk := artifact.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return "sha256:" + "0" * 64  # unreadable: cannot match, so D2 denies
    return "sha256:" + digest.hexdigest()


def _input(
    plan: RolloutPlan,
    manifest: ModuleManifest,
    check: ArtifactCheck,
    devices: list[Device],
    sites: dict[str, Site],
    catalog: dict[tuple[str, str], ModuleManifest],
    actor: str,
    now: datetime,
    freeze: bool,
) -> RolloutInput:
    missing = sorted({d.site for d in devices} - set(sites))
    if missing:
        raise InputInvalid("policy eval", [("fleet", f"devices at unknown sites: {missing}")])
    targets = select_devices(plan.target, devices, sites)
    return rollout_input(
        plan, manifest, check, targets, sites, catalog, actor=actor, now=now, freeze=freeze
    )


def _decide(engine: PolicyEngine, inp: RolloutInput) -> RolloutDecision:
    decision: RolloutDecision = read_decision(ROLLOUT, engine.decide(ROLLOUT, input_document(inp)))
    return decision


def _print(
    plan: RolloutPlan,
    inp: RolloutInput,
    decision: RolloutDecision,
    engine: PolicyEngine,
    as_json: bool,
) -> None:
    if as_json:
        payload: dict[str, Any] = decision.model_dump(mode="json")
        payload["policy_revision"] = engine.revision
        payload["engine"] = engine.name
        console.print_json(json.dumps(payload))
        return
    if not decision.allow:
        verdict = "[red]denied[/]"
    elif decision.approvals:
        verdict = "[yellow]allowed, needs approval[/]"
    else:
        verdict = "[green]allowed[/]"
    console.print(
        f"[bold]{shown(plan.ref)}[/] plan {shown(plan.plan_id)} rev {plan.revision}: {verdict} "
        f"({decision.targets} targets, {len(inp.waves)} waves; "
        f"{engine.name}, policy {engine.revision[:12]})",
        highlight=False,
    )
    table = Table(show_header=True, show_lines=False)
    table.add_column("", style="bold")
    table.add_column("rule")
    table.add_column("detail")
    for violation in sorted(decision.violations, key=lambda v: (_rule_order(v.rule), v.message)):
        table.add_row("[red]deny[/]", shown(violation.rule), shown(violation.message))
    for warning in decision.warn:
        table.add_row("[yellow]warn[/]", "", shown(warning))
    for need in decision.approvals:
        table.add_row("[cyan]approve[/]", f"{shown(need.role)} ×{need.count}", shown(need.reason))
    if table.row_count:
        console.print(table)


def _rule_order(rule: str) -> tuple[str, int]:
    digits = "".join(c for c in rule if c.isdigit())
    return (rule.rstrip("0123456789"), int(digits) if digits else -1)

"""``--json`` of every list and show command, validated against its ``fieldgate schema``.

One database (SQLite and PostgreSQL) holds runs in every state people meet: awaiting
approval, queued, held by the kill switch, completed and rolled back. Each command's JSON
must validate against the JSON Schema ``fieldgate schema NAME`` prints, be the only thing
on stdout, and keep hostile text inert (escaped, never a raw control or bidi character).
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import typer
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.graphs.compose import default_twin
from fieldgate.scenario import Fault, FaultKind
from fieldgate.schemas import CONTRACTS
from fieldgate.signing import SigningKey
from fieldgate.store import Store

runner = CliRunner()

PUMP = "roll out pump-logic 1.9.0 to rtm-05"
HVAC = "Roll out hvac-controller 2.4.1 to muc-01"
AIR = "Update air-quality-model to 1.2.0 at {site}"
HOSTILE = "\x1b[2J\x1b]0;owned\x07 \x9b31m \u202eevil\u202c [red]boom[/red]"
"""Control sequences, a C1 CSI, a bidi override and rich markup, in a request."""
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def run_cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def ask(request: str) -> str:
    code, out, _ = run_cli("chat", "--as", "eng-ana", "--yes", stdin=request + "\n")
    assert code == 0, out
    with Store.open() as store:
        return store.runs.list()[-1].plan_id


def schema(name: str) -> dict[str, Any]:
    code, out, err = run_cli("schema", name)
    assert code == 0, err
    return json.loads(out)


def as_json(name: str, *args: str, code: int = 0) -> Any:
    """Run a command with ``--json``; check its stdout is one JSON value that validates."""
    done, out, err = run_cli(*args, "--json")
    assert done == code, (args, out, err)
    assert RAW.search(out) is None and out.isascii(), out
    data = json.loads(out)  # nothing else on stdout: no banner, no markup
    jsonschema.validate(data, schema(name))
    return data


@pytest.fixture
def runs(initialised_db: str) -> dict[str, str]:
    """Plans by state: rolled_back, completed, awaiting_approval, held, queued."""
    plans = {}
    plans["rolled_back"] = ask(AIR.format(site="lyon-02"))
    with Store.open() as store:
        default_twin(store).add_faults([Fault(kind=FaultKind.install_fails, wave=1, count=1)])
    assert run_cli("worker", "--once")[0] == 0
    plans["completed"] = ask(PUMP)
    assert run_cli("worker", "--once")[0] == 0
    plans["awaiting_approval"] = ask(f"{HVAC} {HOSTILE}")
    plans["held"] = ask(AIR.format(site="bos-02"))
    code, out, _ = run_cli("stop", plans["held"], "--reason", f"storm {HOSTILE}", "--as", "op-ola")
    assert code == 0, out
    assert run_cli("worker", "--once")[0] == 0
    plans["queued"] = ask(AIR.format(site="osl-01"))
    with Store.open() as store:
        found = {r.plan_id: (r.status, r.outcome) for r in store.runs.list()}
    assert found == {
        plans["rolled_back"]: ("done", "rolled_back"),
        plans["completed"]: ("done", "completed"),
        plans["awaiting_approval"]: ("awaiting_approval", None),
        plans["held"]: ("held", None),
        plans["queued"]: ("queued", None),
    }
    return plans


def test_every_view_contract_has_a_schema_with_documented_fields() -> None:
    views = [n for n, m in CONTRACTS.items() if m.__module__ == "fieldgate.views"]
    assert sorted(views) == sorted(
        [
            "status",
            "catalog-list",
            "catalog-show",
            "fleet-list",
            "fleet-show",
            "approvals-list",
            "approvals-show",
            "keys-list",
            "keys-root",
            "audit-show",
            "policy-show",
            "runs-list",
        ]
    )
    for name in views:
        for field, spec in schema(name)["properties"].items():
            assert spec.get("description"), f"{name}: {field} has no docstring"


JSON_COMMANDS = {
    ("status",): "status",
    ("catalog", "list"): "catalog-list",
    ("catalog", "show"): "catalog-show",
    ("fleet", "list"): "fleet-list",
    ("fleet", "show"): "fleet-show",
    ("approvals", "list"): "approvals-list",
    ("approvals", "show"): "approvals-show",
    ("keys", "list"): "keys-list",
    ("keys", "root", "show"): "keys-root",
    ("audit", "show"): "audit-show",
    ("policy", "show"): "policy-show",
    ("runs", "list"): "runs-list",
}
"""Every command with --json, and the contract its output is."""


def test_every_list_and_show_command_has_json_that_names_its_schema() -> None:
    root = typer.main.get_command(app)
    for path, name in JSON_COMMANDS.items():
        command: Any = root
        for part in path:
            command = command.commands[part]
        [option] = [p for p in command.params if "--json" in getattr(p, "opts", [])]
        assert f"`fieldgate schema {name}`" in option.help, path
        assert name in CONTRACTS
    listed: set[str] = set()
    for group in ("catalog", "fleet", "approvals", "keys", "audit", "policy", "runs"):
        subcommands = root.commands[group].commands  # type: ignore[attr-defined]
        listed |= {f"{group} {sub}" for sub in subcommands if sub in ("list", "show")}
    assert listed <= {" ".join(p) for p in JSON_COMMANDS}


def test_every_list_and_show_command_prints_json_its_schema_accepts(
    runs: dict[str, str],
) -> None:
    catalog = as_json("catalog-list", "catalog", "list")
    assert ("pump-logic", "1.9.0") in [(m["name"], m["version"]) for m in catalog["manifests"]]
    shown = as_json("catalog-show", "catalog", "show", "pump-logic")
    versions = {m["manifest"]["version"]: m for m in shown["manifests"]}
    assert shown["name"] == "pump-logic" and {"1.8.0", "1.9.0"} <= set(versions)
    assert versions["1.9.0"]["signature_valid"] and versions["1.9.0"]["digest_matches"]

    fleet = as_json("fleet-list", "fleet", "list", "--class", "camera-node", "--limit", "5")
    assert fleet["matched"] == 32 and len(fleet["devices"]) == 5 and fleet["truncated"]
    assert fleet["summary"]["by_class"] == {"camera-node": 32}
    assert fleet["fleet_devices"] > fleet["matched"]
    device = fleet["devices"][0]["id"]
    one = as_json("fleet-show", "fleet", "show", device)
    assert one["kind"] == "device" and one["device"]["id"] == device
    assert one["site"]["id"] == one["device"]["site"]
    key = SigningKey.generate(device)
    assert run_cli("fleet", "enroll", device, "--public-key", key.public_b64, "--replace")[0] == 0
    one = as_json("fleet-show", "fleet", "show", device)
    assert one["key"]["key_id"] == key.key_id and one["key"]["public_key"] == key.public_b64
    site = as_json("fleet-show", "fleet", "show", "rtm-05")
    assert site["kind"] == "site" and "rtm-05-pump-ctl-01" in site["devices"]

    waiting = as_json("approvals-list", "approvals", "list")
    assert [p["plan_id"] for p in waiting["plans"]] == [runs["awaiting_approval"]]
    assert waiting["plans"][0]["missing"] == [{"role": "safety", "count": 1, "reason": ""}]
    for plan in runs.values():
        read = as_json("approvals-show", "approvals", "show", plan)
        assert read["plan_id"] == plan and read["plan"]["plan_id"] == plan
    read = as_json("approvals-show", "approvals", "show", runs["awaiting_approval"])
    assert read["status"] == "awaiting_approval" and read["deadline"]
    assert [n["role"] for n in read["required"]] == ["safety"]

    keys = as_json("keys-list", "keys", "list")
    assert keys["root_version"] == 1 and keys["root_problems"] == []
    assert {k["purpose"] for k in keys["keys"]} >= {"control-plane"}
    root = as_json("keys-root", "keys", "root", "show")
    assert root["version"] == 1 and root["threshold"] == 1 and len(root["keys"]) == 1

    audit = as_json("audit-show", "audit", "show", runs["held"], "--limit", "0")
    assert audit["plan_id"] == runs["held"]
    assert [e["kind"] for e in audit["events"]][:1] == ["request"]
    assert as_json("audit-show", "audit", "show")["plan_id"] is None

    policy = as_json("policy-show", "policy", "show")
    assert policy["rules"] and "rollout.rego" in policy["files"]

    listed = as_json("runs-list", "runs", "list")
    assert {r["plan_id"]: r["outcome"] or r["status"] for r in listed["runs"]} == {
        plan: state for state, plan in runs.items()
    }
    held = next(r for r in listed["runs"] if r["plan_id"] == runs["held"])
    assert held["held_by"] == "kill_switch"
    active = as_json("runs-list", "runs", "list", "--active")
    assert len(active["runs"]) == 3

    every = as_json("status", "status")
    assert [r["plan_id"] for r in every["runs"]] == [
        runs["awaiting_approval"],
        runs["held"],
        runs["queued"],
    ]
    for state, plan in runs.items():
        status = as_json("status", "status", plan)["runs"][0]
        assert status["plan_id"] == plan
        assert (status["outcome"] or status["status"]) == state


def test_status_json_says_what_each_run_waits_for(runs: dict[str, str]) -> None:
    def run(state: str) -> dict[str, Any]:
        return as_json("status", "status", runs[state])["runs"][0]

    waiting = run("awaiting_approval")
    assert [(w["kind"], w["people"]) for w in waiting["waiting"]] == [("approvals", True)]
    assert waiting["waiting"][0]["detail"] == "approvals from 1× safety"
    assert waiting["settled"]

    held = run("held")
    assert [w["kind"] for w in held["waiting"]] == ["kill_switch"]
    assert "storm" in held["waiting"][0]["detail"] and held["settled"]

    queued = run("queued")
    assert [(w["kind"], w["people"]) for w in queued["waiting"]] == [("worker", False)]
    assert not queued["settled"]
    assert queued["states"]["pending"] == sum(w["devices"] for w in queued["waves"]) > 0

    completed = run("completed")
    assert completed["waiting"] == [] and completed["window_waits"] == [] and completed["settled"]
    assert completed["states"] == {
        "pending": 0,
        "waiting_window": 0,
        "applied": 60,
        "failed": 0,
        "unreachable": 0,
        "rolled_back": 0,
    }
    assert [w["status"] for w in completed["waves"]] == ["passed"] * 3

    rolled = run("rolled_back")
    assert rolled["waves"][0]["status"] == "failed"
    assert rolled["states"]["rolled_back"] > 0 and rolled["states"]["applied"] == 0
    assert rolled["outcome"] == "rolled_back" and rolled["waiting"] == []


def test_hostile_text_stays_escaped_in_json(runs: dict[str, str]) -> None:
    for name, args in (
        ("status", ("status", runs["awaiting_approval"])),
        ("approvals-show", ("approvals", "show", runs["awaiting_approval"])),
        ("runs-list", ("runs", "list")),
        ("audit-show", ("audit", "show", runs["awaiting_approval"])),
    ):
        code, out, _ = run_cli(*args, "--json")
        assert code == 0, out
        assert RAW.search(out) is None and out.isascii()
        assert "\\u001b[2J" in out and "\\u202eevil" in out and "\\u009b31m" in out
        assert "[red]boom[/red]" in out  # markup is data in JSON, never interpreted
        jsonschema.validate(json.loads(out), schema(name))
    status = json.loads(run_cli("status", runs["held"], "--json")[1])
    assert HOSTILE in status["runs"][0]["waiting"][0]["detail"]  # the text itself, round-tripped
    request = json.loads(run_cli("status", runs["awaiting_approval"], "--json")[1])
    assert request["runs"][0]["request"] == f"{HVAC} {HOSTILE}"


def test_an_error_with_json_goes_to_stderr_and_leaves_stdout_empty(
    initialised_db: str,
) -> None:
    code, out, err = run_cli("status", "pl-nope", "--json")
    assert code == 2 and out == "" and "no rollout plan 'pl-nope'" in err
    code, out, err = run_cli("fleet", "show", "nope", "--json")
    assert code == 2 and out == "" and "no device or site named 'nope'" in err

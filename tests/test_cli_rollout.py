"""The rollout commands end to end: chat, keys, approvals, worker, stop, audit, demo.

Each test has its own FIELDGATE_HOME and SQLite database; the model is the offline one,
devices are the fleet twin. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from typer.testing import CliRunner

from fieldgate.audit import EventKind
from fieldgate.cli import app
from fieldgate.cli._worker import expire_overdue
from fieldgate.edge._tables import EdgeTable, upsert_devices
from fieldgate.graphs.compose import default_twin, open_orchestrator
from fieldgate.graphs.runner import Orchestrator
from fieldgate.plan import Selector
from fieldgate.store import Store

runner = CliRunner()

HVAC = "Roll out hvac-controller 2.4.1 to muc-01"
PUMP = "roll out pump-logic 1.9.0 to rtm-05"


def invoke(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=stdin, env=env, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An initialised database with the sample; FIELDGATE_HOME and FIELDGATE_DB point at it."""
    url = f"sqlite:///{tmp_path}/fieldgate.db"
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FIELDGATE_DB", url)
    for name in ("FIELDGATE_USER", "FIELDGATE_MODEL", "FIELDGATE_FREEZE", "FIELDGATE_ROSTER"):
        monkeypatch.delenv(name, raising=False)
    code, out = invoke("init")
    assert code == 0, out
    return url


def ask(request: str, actor: str = "eng-ana") -> str:
    """Submit ``request`` through the chat; return the new plan id."""
    code, out = invoke("chat", "--as", actor, "--yes", stdin=request + "\n")
    assert code == 0, out
    with Store.open() as store:
        return store.runs.list()[-1].plan_id


def versions(url: str, site: str, module: str) -> dict[str, int]:
    with Store.open(url) as store:
        counts: dict[str, int] = {}
        for device in store.fleet.devices(Selector(sites=[site])):
            if module in device.installed:
                counts[device.installed[module]] = counts.get(device.installed[module], 0) + 1
        return counts


def test_piped_chat_shows_rationale_plan_verdict_and_status(db: str) -> None:
    env = {**os.environ, "FIELDGATE_USER": "eng-ana"}
    script = f"{HVAC}\nroll out the thing\n/plans\n/why nope\n"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("fieldgate")), "chat"],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "you ›" not in out  # no prompt when stdin is not a terminal
    assert "planner (revision 1):" in out and "Install hvac-controller@2.4.1" in out
    assert "1 canary" in out and "3 wave-3" in out and "≥100% healthy, ≤0 failed" in out
    assert "dry run: 24 targets, about 144 min" in out and "blast radius 1 device" in out
    assert "policy: allowed with approvals: 1× safety" in out
    assert "awaiting approval from 1× safety" in out
    assert "needs clarification: Which module" in out and "candidates: air-quality-model" in out
    assert "plans: 2" in out
    assert "no rollout plan 'nope'" in done.stderr
    with Store.open(db) as store:
        runs = store.runs.list()
    assert [(r.actor, r.status, r.outcome) for r in runs] == [
        ("eng-ana", "awaiting_approval", None),
        ("eng-ana", "done", "needs_clarification"),
    ]


def test_chat_under_a_freeze_shows_the_denial(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDGATE_FREEZE", "1")
    code, out = invoke("chat", "--as", "eng-ana", stdin=PUMP + "\n")
    assert code == 0, out
    assert "policy: denied" in out
    assert "deny: freeze: a change freeze is in force" in out
    assert "denied — freeze" in out
    with Store.open(db) as store:
        plan = store.runs.list()[-1].plan_id
    code, out = invoke("chat", stdin=f"/why {plan}\n/status {plan}\n")
    assert code == 0, out
    assert "policy (fieldgate.rollout.decision): deny" in out and "outcome: denied" in out
    assert f"{plan}: denied — freeze" in out


def test_chat_refuses_an_unknown_model(db: str) -> None:
    code, out = invoke("chat", "--model", "gpt-nonsense", stdin="")
    assert code == 2
    assert "use 'offline' or 'openai:NAME'" in out


def test_keys_init_saves_a_private_key_that_counts_once_a_root_holder_enrolls_it(
    db: str, tmp_path: Path
) -> None:
    code, out = invoke("keys", "init", "--as", "saf-lee")
    assert code == 0, out
    path = tmp_path / "home" / "keys" / "saf-lee.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "not trusted until a root holder enrolls it" in out
    with Store.open(db) as store:
        assert store.keys.for_owner("saf-lee", "approver") == []
    code, out = invoke("keys", "enroll", "saf-lee", "--as", getpass.getuser())
    assert code == 0 and "trusted" in out, out
    with Store.open(db) as store:
        (trusted,) = store.keys.for_owner("saf-lee", "approver")
    assert trusted.key_id in out
    code, out = invoke("keys", "init", "--as", "saf-lee")
    assert code == 2 and "--force" in out
    assert invoke("keys", "init", "--as", "saf-lee", "--force")[0] == 0
    code, out = invoke("keys", "list")
    assert code == 0 and "saf-lee" in out and "approver" in out and "trusted" in out
    assert "no (another key)" in out
    assert invoke("keys", "init", "--as", "../evil")[0] == 2
    assert invoke("keys", "init", "--as", "control-plane")[0] == 2


def enroll(*people: str) -> None:
    """Make each person's key and have the root holder (who ran ``init``) enroll it."""
    for person in people:
        assert invoke("keys", "init", "--as", person)[0] == 0
        code, out = invoke("keys", "enroll", person, "--as", getpass.getuser())
        assert code == 0 and "trusted" in out, out


def test_approvals_flow_with_own_approval_missing_key_and_reject(db: str) -> None:
    plan = ask(HVAC)
    code, out = invoke("approvals", "list")
    assert code == 0 and plan in out and "1× safety" in out and "eng-ana" in out

    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 2
    assert "no key for 'saf-lee'" in out and "fieldgate keys init --as saf-lee" in out

    enroll("eng-ana", "saf-lee")
    code, out = invoke("approvals", "approve", plan, "--as", "eng-ana", "--comment", "mine")
    assert code == 1, out
    assert "does not count" in out and "the requester cannot decide on their own plan" in out
    assert "still missing 1× safety" in out

    code, out = invoke("approvals", "show", plan)
    assert code == 0, out
    assert "did not count: eng-ana" in out and "missing: 1× safety" in out
    assert "approval request" not in out and "since proposed" not in out
    assert "policy: allowed with approvals: 1× safety" in out and "dry run: 24 targets" in out
    assert f"fieldgate approvals approve {plan} --as YOU" in out
    assert f"fieldgate approvals reject {plan} --as YOU" in out
    assert f"approvals show {plan}`" not in out
    assert out.count("% healthy, ≤") == 3, "one gate line per wave, nothing twice"
    code, out = invoke("approvals", "show", plan, "--request")
    assert code == 0 and "approval request" in out and "Requested by eng-ana" in out
    assert "≥100% healthy" in out and "≥1.0 healthy" not in out

    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee", "-m", "window checked")
    assert code == 0, out
    assert "counts" in out and "approved: the quorum is reached; queued for a worker" in out
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 2 and "is not awaiting approval (it is queued)" in out
    code, out = invoke("approvals", "reject", "pl-nope", "--as", "saf-lee")
    assert code == 2 and "no rollout plan 'pl-nope'" in out

    again = ask(HVAC)  # the same request again is a new plan, not a clash
    assert again != plan
    code, out = invoke("approvals", "reject", again, "--as", "saf-lee", "-m", "not this week")
    assert code == 0, out
    assert "rejected; nothing is sent to devices" in out
    with Store.open(db) as store:
        assert store.runs.for_plan(again).outcome == "rejected"
        assert store.runs.for_plan(plan).status == "queued"
    code, out = invoke("approvals", "list")
    assert code == 0 and "no plans are waiting for approval" in out


def test_approvals_show_warns_about_what_changed_since_the_plan_was_proposed(
    db: str, tmp_path: Path
) -> None:
    plan = ask(HVAC)
    with Store.open(db) as store:
        targets = [d.id for d in store.fleet.devices(Selector(sites=["muc-01"]))]
        targets = [t for t in targets if "hvac" in t]
        for device in targets[:12]:
            store.fleet.set_installed(device, "hvac-controller", "2.4.1")
        newer = store.catalog.get("hvac-controller", "2.4.1").model_copy(
            update={"version": "2.5.0"}
        )
        store.catalog.import_manifests([(newer, None)], source="test", actor="eng-ana")
        EdgeTable.metadata.create_all(store.engine)
        with store.engine.begin() as conn:
            upsert_devices(
                conn,
                [
                    {
                        "device_id": targets[-1],
                        "site": "muc-01",
                        "online": False,
                        "seen_us": 0,
                        "hlc_wall": 0,
                        "hlc_counter": 0,
                        "installed": "{}",
                        "health": None,
                    }
                ],
            )
    code, out = invoke("approvals", "show", plan)
    assert code == 0, out
    text = " ".join(out.split())
    assert "since proposed: 12 of 24 targets already run hvac-controller@2.4.1" in text
    assert f"1 of 24 targets are offline now ({targets[-1]})" in text
    assert "hvac-controller 2.5.0 is in the catalog now, newer than 2.4.1" in text
    code, out = invoke("approvals", "show", plan, env={"FIELDGATE_FREEZE": "1"})
    assert "since proposed: a change freeze is in force" in " ".join(out.split())


def test_approval_deadlines_run_on_peoples_time_not_the_twins_leaps(db: str) -> None:
    plan = ask(HVAC)
    with open_orchestrator(db) as orchestrator:
        view = orchestrator.view(plan)
        assert view.status == "awaiting_approval"
        requested = datetime.fromisoformat(view.values["approval_requested_at"])
        assert abs(requested - datetime.now(UTC)) < timedelta(minutes=5), "requested in wall time"
        request_event = orchestrator.ctx.store.audit.events(plan_id=plan)[0]
        assert abs(request_event.at - requested) < timedelta(minutes=5)

        # A rollout waiting for a maintenance window leaps the twin's clock days ahead:
        # the request still has 72 hours of people's time.
        twin = orchestrator.ctx.transport.twin  # type: ignore[attr-defined]
        twin.advance(timedelta(hours=100))
        assert orchestrator.ctx.now() > requested + timedelta(hours=72)
        assert expire_overdue(orchestrator) == []
        assert orchestrator.view(plan).status == "awaiting_approval"

        # 73 hours later for people, the worker ends it.
        later = dataclasses.replace(
            orchestrator.ctx, people_clock=lambda: requested + timedelta(hours=73)
        )
        saver = orchestrator.graph.checkpointer
        assert isinstance(saver, BaseCheckpointSaver)
        late = Orchestrator(later, saver)
        assert expire_overdue(late) == [plan]
        assert late.view(plan).outcome == "expired"
        expired = late.ctx.store.audit.events(plan_id=plan, kinds=[EventKind.approval])[-1]
        assert expired.payload["expired"] is True
        assert expired.at == requested + timedelta(hours=73)


def test_worker_once_completes_a_queued_run(db: str) -> None:
    plan = ask(PUMP)
    assert versions(db, "rtm-05", "pump-logic") == {"1.8.0": 60}
    code, out = invoke("worker", "--once")
    assert code == 0, out
    assert "wave 1 canary" in out and "3/3" in out and "45/45" in out
    assert f"{plan}: completed" in out
    assert "worker: executed 1 run (1 completed); expired 0" in out
    assert versions(db, "rtm-05", "pump-logic") == {"1.9.0": 60}
    with Store.open(db) as store:
        assert default_twin(store).versions("pump-logic")["1.9.0"] == 60
        assert store.runs.for_plan(plan).outcome == "completed"
    code, out = invoke("worker", "--once")
    assert code == 0 and "nothing to do" in out
    code, out = invoke("audit", "show", plan, "--kind", "tool_call", "--limit", "0")
    assert code == 0 and f"audit: 3 events of plan {plan}" in out  # a deploy_wave per wave
    assert invoke("audit", "verify")[0] == 0


def test_stop_all_then_worker_holds_and_sends_nothing_until_released(db: str) -> None:
    plan = ask(PUMP)
    assert invoke("stop")[0] == 2
    assert invoke("stop", "pl-nope")[0] == 2
    code, out = invoke("stop", "--all", "--reason", "storm over rtm-05")
    assert code == 0, out
    assert "engaged" in out and "holds within one executor step" in out and plan in out
    code, out = invoke("worker", "--once")
    assert code == 0, out
    assert f"{plan}: held by the kill switch" in out and "storm over rtm-05" in out
    assert versions(db, "rtm-05", "pump-logic") == {"1.8.0": 60}
    with Store.open(db) as store:
        run = store.runs.for_plan(plan)
        assert run.status == "held" and run.outcome is None
        assert default_twin(store).effects() == []
        assert store.audit.events(plan_id=plan, kinds=[EventKind.tool_call]) == []
        pulled = store.audit.events(kinds=[EventKind.stop])[0]
        assert pulled.payload == {
            "scope": "*",
            "engaged": True,
            "abort": False,
            "reason": "storm over rtm-05",
        }
    code, out = invoke("stop", "--release", "--all")
    assert code == 0 and "released" in out
    with Store.open(db) as store:
        assert store.stops.engaged(plan) is None
    code, out = invoke("worker", "--once")
    assert code == 0, out
    assert "executed 1 run (1 completed)" in out
    assert versions(db, "rtm-05", "pump-logic") == {"1.9.0": 60}


def test_demo_tells_the_whole_story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "untouched"))
    code, out = invoke("demo")
    assert code == 0, out
    milestones = [
        "1. init",
        "needs clarification:",
        "policy: denied",
        "deny: freeze",
        "awaiting approval from 1× safety",
        "signed approval by eng-ana",
        "does not count — the requester cannot decide on their own plan",
        "signed approval by saf-lee",
        "approved: the quorum is reached",
        "completed — all 3 waves passed their gates",
        "hvac-controller at muc-01 (fleet inventory): 24× 2.4.1",
        "fault injected",
        "rolled back 1 device(s) to 1.1.0",
        "rolled_back — abort criteria tripped",
        "air-quality-model at lyon-02 (fleet inventory): 20× 1.1.0",
        "audit chain ok",
    ]
    assert [m for m in milestones if m not in out] == []
    positions = [out.find(m) for m in milestones]
    assert positions == sorted(positions)
    assert os.environ["FIELDGATE_HOME"] == str(tmp_path / "untouched")
    assert not (tmp_path / "untouched").exists()

"""Attacks on trust in people: minted keys, edited and shadowing key rows, late and back-dated
approvals, a second approval for a filled slot, revocation, root rotation, k-of-n enrollment.

Each attack is run on real SQLite and real PostgreSQL; each asserts that it fails and that
the reason is named. The deployment is made the way an operator makes it: ``fieldgate
init`` by the root holder, ``keys init`` by a person, ``keys enroll`` by the root holder.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from typer.testing import CliRunner

from fieldgate.approvals import Approval, Decision
from fieldgate.cli import app
from fieldgate.cli._approvals import decide
from fieldgate.config import Config
from fieldgate.errors import FieldgateError
from fieldgate.graphs.approval import ApprovalResume, ReviewDecision
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.compose import build_context
from fieldgate.graphs.runner import Orchestrator, RunView
from fieldgate.keyfiles import enroll_with, load_key, load_pinned_root
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.trust import RootKey, TrustRoot

runner = CliRunner()

ROOT_HOLDER = "adm-root"
HVAC = "Roll out hvac-controller 2.4.1 to muc-01"
"""Needs one safety approval (saf-lee or saf-ola in the pack's roster)."""


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@dataclass
class Deployment:
    """One initialised deployment: its database and the root holder's home."""

    url: str
    home: Path
    monkeypatch: pytest.MonkeyPatch

    def act_as(self, user: str, home: Path | None = None) -> None:
        """Run the next commands as ``user`` from ``home`` (default: the root holder's)."""
        self.monkeypatch.setenv("FIELDGATE_USER", user)
        self.monkeypatch.setenv("FIELDGATE_HOME", str(home or self.home))

    def enroll(self, *people: str) -> None:
        """Make each person's key and have the root holder enroll it."""
        for person in people:
            assert invoke("keys", "init", "--as", person)[0] == 0
            code, out = invoke("keys", "enroll", person, "--as", ROOT_HOLDER)
            assert code == 0 and ": trusted" in out, out

    def ask(self, request: str = HVAC, actor: str = "eng-ana") -> str:
        """Submit ``request``; return the plan id."""
        result = runner.invoke(app, ["chat", "--as", actor], input=request + "\n")
        assert result.exit_code == 0, result.output
        with Store.open(self.url) as store:
            return store.runs.list()[-1].plan_id

    def config(self) -> Config:
        return Config(home=self.home, db=self.url)

    def orchestrate(
        self, check: Callable[[Orchestrator], None], clock: Callable[[], datetime] | None = None
    ) -> None:
        """Run ``check`` with an orchestrator over the deployment (people on ``clock``)."""
        config = self.config()
        with Store.open(self.url) as store, open_checkpointer(self.url) as checkpointer:
            ctx = build_context(config, store, people_clock=clock or (lambda: datetime.now(UTC)))
            check(Orchestrator(ctx, checkpointer))

    def store(self) -> Store:
        return Store.open(self.url)


@pytest.fixture
def deployment(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    home = tmp_path / "adm-root"
    monkeypatch.setenv("FIELDGATE_DB", db_url)
    for name in ("FIELDGATE_MODEL", "FIELDGATE_FREEZE", "FIELDGATE_ROSTER"):
        monkeypatch.delenv(name, raising=False)
    made = Deployment(db_url, home, monkeypatch)
    made.act_as(ROOT_HOLDER)
    code, out = invoke("init")
    assert code == 0 and "root of trust version 1" in out, out
    return made


def _thread(store: Store, plan: str) -> str:
    return store.runs.for_plan(plan).thread_id


def _ignored(view: RunView, person: str) -> list[str]:
    return [
        e["reason"]
        for e in (view.values.get("approvals") or {}).get("ignored") or []
        if e["approver"] == person
    ]


def _approve_with(key: SigningKey, plan: str, deployment: Deployment) -> RunView:
    """Hand the run an approval signed with ``key``, past every CLI check."""
    views: list[RunView] = []

    def check(orchestrator: Orchestrator) -> None:
        views.append(orchestrator.decide(_thread(orchestrator.ctx.store, plan), key, "approve"))

    deployment.orchestrate(check)
    return views[0]


# --------------------------------------------------------------------------- minted keys


def test_a_key_minted_for_someone_else_does_not_let_anyone_approve_as_them(
    deployment: Deployment, tmp_path: Path
) -> None:
    plan = deployment.ask()
    # eng-ana, in her own home with the deployment's public root pinned, mints saf-lee a key.
    ana = tmp_path / "eng-ana"
    ana.mkdir()
    shutil.copy(deployment.home / "trust-root.json", ana / "trust-root.json")
    deployment.act_as("eng-ana", ana)
    code, out = invoke("keys", "init", "--as", "saf-lee", "--force")
    assert code == 0 and "not trusted until a root holder enrolls it" in out
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 2 and "not saf-lee's enrolled approver key" in out, out
    assert "saf-lee has no enrolled approver key" in out
    code, out = invoke("keys", "enroll", "saf-lee", "--as", "eng-ana")
    assert code == 2 and "eng-ana holds no root key here" in out, out

    # Past the CLI, straight into the graph: the approval is recorded and does not count.
    minted = load_key(ana / "keys", "saf-lee")
    view = _approve_with(minted, plan, deployment)
    assert not view.values.get("approved") and view.interrupts
    (reason,) = _ignored(view, "saf-lee")
    assert reason == "the signature does not verify: saf-lee has no enrolled approver key"
    with deployment.store() as store:
        assert [a.approver for a in store.approvals.for_plan(plan)] == ["saf-lee"]


def test_nobody_enrolls_their_own_key(deployment: Deployment) -> None:
    assert invoke("keys", "init", "--as", ROOT_HOLDER)[0] == 0
    code, out = invoke("keys", "enroll", ROOT_HOLDER, "--as", ROOT_HOLDER)
    assert code == 1 and "nobody enrolls their own key" in out, out
    with deployment.store() as store:
        assert store.keys.for_owner(ROOT_HOLDER, "approver") == []


# --------------------------------------------------------------------------- key rows


def test_an_edited_key_row_makes_its_owner_count_for_nothing(deployment: Deployment) -> None:
    deployment.enroll("saf-lee")
    plan = deployment.ask()
    forged = SigningKey.generate("saf-lee")
    with deployment.store() as store, store.engine.begin() as db:
        db.execute(
            sqlalchemy.text("UPDATE trusted_key SET public_b64 = :p WHERE owner = 'saf-lee'"),
            {"p": forged.public_b64},
        )
    view = _approve_with(forged, plan, deployment)
    assert not view.values.get("approved")
    (reason,) = _ignored(view, "saf-lee")
    assert "the row does not match its signed enrollment (edited)" in reason
    code, out = invoke("keys", "list")
    assert code == 1 and "bad: the row does not match its signed enrollment" in out, out
    code, out = invoke("audit", "verify")
    assert code == 1 and "key row bad" in out and "saf-lee" in out, out


def test_an_unsigned_newer_row_shadows_nothing_and_voids_its_owner(
    deployment: Deployment,
) -> None:
    deployment.enroll("saf-lee")
    plan = deployment.ask()
    shadow = SigningKey.generate("saf-lee")
    with deployment.store() as store:
        store.keys.trust("saf-lee", shadow.public_b64, "approver")  # the old, unsigned way in
    view = _approve_with(shadow, plan, deployment)
    assert not view.values.get("approved")
    assert "no root holder signed it" in _ignored(view, "saf-lee")[0]
    # Not even saf-lee's real key counts while a bad row of theirs stands.
    real = load_key(deployment.home / "keys", "saf-lee")
    view = _approve_with(real, plan, deployment)
    assert not view.values.get("approved")
    assert any("another approver key row of saf-lee is bad" in r for r in _ignored(view, "saf-lee"))
    code, out = invoke("keys", "list")
    assert code == 1 and shadow.key_id in out and "it is not enrolled" in out, out


def test_a_revoked_key_stops_counting(deployment: Deployment) -> None:
    deployment.enroll("saf-lee")
    key = load_key(deployment.home / "keys", "saf-lee")
    code, out = invoke("keys", "revoke", key.key_id, "--reason", "laptop lost")
    assert code == 0 and "revoked" in out, out
    plan = deployment.ask()
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 2 and "revoked: laptop lost" in out, out
    view = _approve_with(key, plan, deployment)
    assert not view.values.get("approved")
    assert "revoked: laptop lost" in _ignored(view, "saf-lee")[0]
    with deployment.store() as store:
        actions = [e.payload.get("action") for e in store.audit.events() if e.kind == "key"]
    # init enrolls the sample's throwaway factory key, then saf-lee's is enrolled and revoked
    assert actions == ["init-root", "enroll", "enroll", "revoke"]


# --------------------------------------------------------------------------- approval times


def test_an_approval_after_the_deadline_is_recorded_and_does_not_count(
    deployment: Deployment,
) -> None:
    deployment.enroll("saf-lee")
    plan = deployment.ask()
    late = datetime.now(UTC) + timedelta(hours=73)  # no worker has expired the run yet
    results: list[tuple[RunView, bool]] = []

    def check(orchestrator: Orchestrator) -> None:
        results.append(
            decide(orchestrator, plan, "saf-lee", "approve", keys_dir=deployment.home / "keys")
        )

    deployment.orchestrate(check, clock=lambda: late)
    view, took = results[0]
    assert not took and not view.values.get("approved")
    assert _ignored(view, "saf-lee") == ["it was signed or received after the approval deadline"]
    with deployment.store() as store:
        assert len(store.approvals.for_plan(plan)) == 1


def test_a_back_dated_approval_does_not_count(deployment: Deployment) -> None:
    deployment.enroll("saf-lee")
    plan = deployment.ask()
    key = load_key(deployment.home / "keys", "saf-lee")
    views: list[RunView] = []

    def check(orchestrator: Orchestrator) -> None:
        thread = _thread(orchestrator.ctx.store, plan)
        waiting = orchestrator.waiting(thread)
        signed = Approval(
            plan_id=plan,
            plan_hash=waiting.values["plan_hash"],
            approver="saf-lee",
            decision=Decision.approve,
            at=datetime.now(UTC) - timedelta(hours=1),
        ).signed_with(key)
        resume = ApprovalResume(
            decisions=[ReviewDecision(type="approve")], approver="saf-lee", approval=signed
        )
        views.append(orchestrator.answer(thread, resume))

    deployment.orchestrate(check)
    assert not views[0].values.get("approved")
    assert _ignored(views[0], "saf-lee") == [
        "its signed time is too far from the control plane's clock (back-dated or ahead)"
    ]


def test_a_second_approval_by_someone_who_fills_a_slot_does_not_count(
    deployment: Deployment,
) -> None:
    deployment.enroll("saf-lee")
    plan = deployment.ask("Roll out safety-interlock 1.1.0 to rtm-05")
    code, out = invoke("approvals", "show", plan)
    assert "2× safety" in out, out
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 0 and "counts" in out, out
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee", "-m", "again")
    assert code == 1, out
    assert "does not count — this person already fills a slot" in out


# --------------------------------------------------------------------------- the root


@pytest.fixture
def two_of_two(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """A deployment whose root needs both of its holders, adm-a and adm-b."""
    monkeypatch.setenv("FIELDGATE_DB", db_url)
    deployment = Deployment(db_url, tmp_path / "admins", monkeypatch)
    deployment.act_as("adm-a")
    code, out = invoke(
        "init", "--root-holder", "adm-a", "--root-holder", "adm-b", "--root-threshold", "2"
    )
    assert code == 0 and "2 of 2 root keys" in out, out
    return deployment


def test_k_of_n_root_holders_enroll_a_key_only_together(two_of_two: Deployment) -> None:
    deployment = two_of_two
    assert invoke("keys", "init", "--as", "saf-lee")[0] == 0
    code, out = invoke("keys", "enroll", "saf-lee", "--as", "adm-a")
    assert code == 0 and "not trusted yet: 1 of the 2 root signatures it needs" in out, out
    plan = deployment.ask()
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 2 and "1 of the 2 root signatures" in out, out
    code, out = invoke("keys", "enroll", "saf-lee", "--as", "adm-b")
    assert code == 0 and ": trusted" in out, out
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 0 and "quorum is reached" in out, out


def test_a_rotated_root_keeps_enrollments_and_drops_the_old_key(deployment: Deployment) -> None:
    deployment.enroll("saf-lee")
    old = load_key(deployment.home / "keys", ROOT_HOLDER, root=True)
    code, out = invoke("keys", "root", "rotate", "--as", ROOT_HOLDER)
    assert code == 0 and "root version 2" in out and "3 enrollment(s) signed again" in out, (
        out
    )  # saf-lee, control plane, the sample catalog's factory key
    pinned = load_pinned_root(deployment.home / "trust-root.json")
    assert pinned is not None and pinned.version == 2 and pinned.key(old.key_id) is None
    plan = deployment.ask()
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 0 and "quorum is reached" in out, out
    with (
        deployment.store() as store,
        pytest.raises(FieldgateError, match="not a key of root version 2"),
    ):
        enroll_with(store, pinned, old, "saf-ola", "approver", SigningKey.generate("x").public_b64)


def test_a_forged_root_version_in_the_database_is_refused_and_named(
    deployment: Deployment,
) -> None:
    deployment.enroll("saf-lee")
    pinned = load_pinned_root(deployment.home / "trust-root.json")
    assert pinned is not None
    mallory = SigningKey.generate("mallory")
    forged = TrustRoot(
        version=2,
        threshold=1,
        keys=(RootKey(key_id=mallory.key_id, holder="mallory", public_b64=mallory.public_b64),),
        at=datetime.now(UTC),
    ).signed_with(mallory)
    with deployment.store() as store:
        store.keys.add_root(forged)
        # Mallory's root would let her enroll herself a safety approver key.
        enroll_with(store, forged, mallory, "saf-ola", "approver", mallory.public_b64)
    code, out = invoke("keys", "list")
    assert code == 1, out
    assert "root version 2: root version 2 carries 0 valid signature(s) of version 1's keys" in out
    plan = deployment.ask()
    view = _approve_with(SigningKey(owner="saf-ola", private=mallory.private), plan, deployment)
    assert not view.values.get("approved")


# --------------------------------------------------------------------------- coverage


def test_init_imports_seeding_and_key_changes_are_audited_with_digests(
    deployment: Deployment, tmp_path: Path
) -> None:
    inventory = tmp_path / "fleet.yaml"
    assert (
        invoke("fleet", "seed", "--sites", "1", "--devices-per-site", "2", "--out", str(inventory))[
            0
        ]
        == 0
    )
    assert invoke("fleet", "import", str(inventory))[0] == 0
    assert invoke("fleet", "seed", "--sites", "1", "--devices-per-site", "2", "--seed", "7")[0] == 0
    deployment.enroll("saf-lee")
    with deployment.store() as store:
        events = [(e.kind.value, e.payload.get("action"), e.actor) for e in store.audit.events()]
        imports = [e.payload for e in store.audit.events() if e.kind in ("catalog", "fleet")]
    assert events == [
        ("key", "init-root", ROOT_HOLDER),
        ("key", "enroll", ROOT_HOLDER),  # the sample catalog's throwaway factory key
        ("catalog", "import", ROOT_HOLDER),
        ("fleet", "import", ROOT_HOLDER),
        ("fleet", "import", ROOT_HOLDER),
        ("fleet", "seed", ROOT_HOLDER),
        ("key", "enroll", ROOT_HOLDER),
    ]
    digest = "sha256:" + hashlib.sha256(inventory.read_bytes()).hexdigest()
    assert imports[2]["source"] == str(inventory) and imports[2]["digest"] == digest
    assert all(p["digest"].startswith("sha256:") for p in imports if p["action"] == "import")


def test_a_changed_roster_or_freeze_is_audited_once(deployment: Deployment, tmp_path: Path) -> None:
    def settings_events() -> list[dict[str, object]]:
        with deployment.store() as store:
            return [e.payload for e in store.audit.events(kinds=["settings"])]

    assert invoke("approvals", "list")[0] == 0
    assert invoke("approvals", "list")[0] == 0
    assert [e["freeze"] for e in settings_events()] == [False]
    roster = tmp_path / "roster.json"
    roster.write_text('{"saf-lee": ["safety"], "eng-ana": ["engineer"]}')
    deployment.monkeypatch.setenv("FIELDGATE_ROSTER", str(roster))
    deployment.monkeypatch.setenv("FIELDGATE_FREEZE", "1")
    assert invoke("approvals", "list")[0] == 0
    assert invoke("approvals", "list")[0] == 0
    events = settings_events()
    assert len(events) == 2 and events[1]["freeze"] is True
    assert events[1]["roster"] == {"saf-lee": ["safety"], "eng-ana": ["engineer"]}


def test_k_of_n_root_holders_rotate_the_root_together(two_of_two: Deployment) -> None:
    deployment = two_of_two
    assert invoke("keys", "init", "--as", "saf-lee")[0] == 0
    for holder in ("adm-a", "adm-b"):
        assert invoke("keys", "enroll", "saf-lee", "--as", holder)[0] == 0
    code, out = invoke("keys", "root", "rotate", "--as", "adm-a")
    assert code == 1 and "not current yet" in out and "it needs 2" in out, out
    code, out = invoke("keys", "list")
    assert code == 1 and "root version 2" in out, out  # proposed, refused until co-signed
    code, out = invoke("keys", "root", "sign", "2", "--as", "adm-b")
    assert code == 0 and "root version 2 is current" in out, out
    code, out = invoke("keys", "list")
    assert code == 0 and "(root version 2)" in out, out
    plan = deployment.ask()
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee")
    assert code == 0 and "quorum is reached" in out, out

"""The approval inbox in real headless Chromium: decisions signed in the browser count through
the same signature and policy checks as the CLI; forged ones, strangers and bad tokens do not.

The server is ``fieldgate serve``'s application on a real uvicorn server over an initialised
database (SQLite and PostgreSQL); the browser is Debian's chromium driven by Playwright (no
downloaded browsers). Set FIELDGATE_INBOX_SCREENSHOTS=docs to save the README's screenshots.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.config import Config
from fieldgate.keyfiles import save_key
from fieldgate.signing import SigningKey
from fieldgate.store import Store

if TYPE_CHECKING:
    from playwright.sync_api import APIResponse, Browser, Page, Route

CHROMIUM = "/usr/bin/chromium"
HVAC = "Roll out hvac-controller 2.4.1 to muc-01"
"""Needs one safety approval (saf-lee or saf-ola in the pack's roster)."""
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

runner = CliRunner()


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.output


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless chromium under Playwright; skipped (failed under CI=true) without it."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)"
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: the browser tests are required)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@dataclass
class Served:
    """An initialised deployment with the inbox served over it."""

    url: str
    db: str
    home: Path

    def enroll(self, *people: str) -> None:
        """Make each person's key and have the root holder (who ran ``init``) enroll it."""
        for person in people:
            assert invoke("keys", "init", "--as", person)[0] == 0
            code, out = invoke("keys", "enroll", person, "--as", getpass.getuser())
            assert code == 0 and "trusted" in out, out

    def ask(self, request: str = HVAC, actor: str = "eng-ana") -> str:
        """Submit ``request`` through the chat; return the new plan id."""
        code, out = invoke("chat", "--as", actor, stdin=request + "\n")
        assert code == 0, out
        with self.store() as store:
            return store.runs.list()[-1].plan_id

    def token(self, person: str) -> str:
        """``fieldgate serve token --as PERSON``: the token it prints."""
        code, out = invoke("serve", "token", "--as", person)
        assert code == 0, out
        (made,) = [line for line in out.splitlines() if line.startswith("fgi_")]
        return made

    def key_file(self, person: str) -> Path:
        return self.home / "keys" / f"{person}.key"

    def store(self) -> Store:
        return Store.open(self.db)

    def refusals(self, plan: str) -> list[dict[str, Any]]:
        with self.store() as store:
            return [
                e.payload
                for e in store.audit.events(plan_id=plan)
                if e.kind == "approval" and "refused" in e.payload
            ]


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def served(initialised_db: str) -> Iterator[Served]:
    import uvicorn

    from fieldgate.cli._inbox import inbox_app
    from fieldgate.graphs.compose import open_orchestrator
    from fieldgate.tokens import TOKENS_FILE, TokenBook

    config = Config.from_env()
    sock = _free_socket()
    port = sock.getsockname()[1]
    with open_orchestrator(config=config) as orchestrator:
        application = inbox_app(
            orchestrator, TokenBook(config.home / TOKENS_FILE), poll_seconds=0.2
        )
        server = uvicorn.Server(
            uvicorn.Config(
                application, log_level="warning", timeout_graceful_shutdown=1, lifespan="off"
            )
        )
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            for _ in range(100):
                if server.started:
                    break
                threading.Event().wait(0.05)
            assert server.started, "the inbox server did not start"
            yield Served(f"http://127.0.0.1:{port}", initialised_db, config.home)
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.set_default_timeout(15_000)
    yield opened
    context.close()
    assert errors == [], errors


def _sign_in(page: Page, served: Served, person: str) -> None:
    page.goto(f"{served.url}/#token={served.token(person)}")
    page.wait_for_selector(f"#who:has-text('signed in as {person}')")


def _load_key(page: Page, path: Path) -> str:
    page.set_input_files("#key-file", str(path))
    page.wait_for_selector("#key-state:has-text('loaded')")
    text: str = page.inner_text("#key-state")
    return text


def _card(plan: str) -> str:
    return f"section.plan[data-plan='{plan}']"


def _screenshot(page: Page, name: str) -> None:
    where = os.environ.get("FIELDGATE_INBOX_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / name), full_page=True)


def _api(
    page: Page, served: Served, token: str | None, method: str, path: str, body: Any = None
) -> APIResponse:
    """Call the inbox API from the page's origin, as the page does (or with no token)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = page.request.fetch(
        served.url + path,
        method=method,
        headers=headers,
        data=json.dumps(body) if body is not None else None,
    )
    return response


# --------------------------------------------------------------------------- signing in the browser


def test_an_approval_signed_in_the_browser_counts_and_queues_the_run(
    served: Served, page: Page
) -> None:
    served.enroll("saf-lee")
    plan = served.ask()
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url + (request.post_data or "")))
    _sign_in(page, served, "saf-lee")
    card = _card(plan)
    page.wait_for_selector(card)
    text = page.inner_text(card)
    assert "hvac-controller 2.4.1" in text and "requested by eng-ana" in text
    assert "dry run: 24 targets" in text and "policy: allowed with approvals: 1× safety" in text
    assert "missing: 1× safety" in text and "safety: saf-lee, saf-ola" in text
    assert "canary" in text
    state = _load_key(page, served.key_file("saf-lee"))
    assert "your enrolled approver key" in state
    _screenshot(page, "inbox.png")

    page.fill(f"{card} textarea.comment", "window checked")
    page.click(f"{card} button.approve")
    page.wait_for_selector("#notice:has-text('counts')")
    assert "approved: the quorum is reached; queued for a worker" in page.inner_text("#notice")
    page.wait_for_selector(card, state="detached")
    with served.store() as store:
        assert store.runs.for_plan(plan).status == "queued"
        (approval,) = store.approvals.for_plan(plan)
        key_id = store.keys.for_owner("saf-lee", "approver")[0].key_id
    assert approval.approver == "saf-lee" and approval.comment == "window checked"
    assert approval.key_id == key_id
    assert served.refusals(plan) == []
    # The private key never left the page, in any form the key file holds it.
    seed = served.key_file("saf-lee").read_text().strip()
    assert any("/decision" in request for request in sent)
    assert not [r for r in sent if seed in r or base64.b64decode(seed).hex() in r]

    code, out = invoke("worker", "--once")
    assert code == 0 and "1 completed" in out, out
    page.goto(f"{served.url}/runs/{plan}")
    page.wait_for_selector("p.state:has-text('completed')")
    waves = page.inner_text("table.waves")
    assert "canary" in waves and "passed" in waves
    _screenshot(page, "run.png")


def test_an_edit_proposed_in_the_browser_becomes_a_new_revision(served: Served, page: Page) -> None:
    served.enroll("saf-lee")
    plan = served.ask()
    _sign_in(page, served, "saf-lee")
    card = _card(plan)
    page.wait_for_selector(card)
    _load_key(page, served.key_file("saf-lee"))
    page.click(f"{card} details.edit summary")
    draft = json.loads(page.input_value(f"{card} textarea.draft"))
    draft["rationale"] = "Slower canary, edited by safety."
    draft["waves"][0]["max_parallel"] = 1
    page.fill(f"{card} textarea.draft", json.dumps(draft))
    page.fill(f"{card} textarea.comment", "one at a time")
    page.click(f"{card} button.propose")
    page.wait_for_selector("#notice:has-text('now revision 2')")
    page.wait_for_selector(f"{card} h2:has-text(' r2:')")
    assert "Slower canary, edited by safety." in page.inner_text(card)
    with served.store() as store:
        edits = [e for e in store.audit.events(plan_id=plan) if e.payload.get("edited_by")]
    assert [e.actor for e in edits] == ["saf-lee"]


# --------------------------------------------------------------------------- forgeries


def test_a_tampered_signature_sent_by_the_page_does_not_count_and_is_audited(
    served: Served, page: Page
) -> None:
    served.enroll("saf-lee")
    plan = served.ask()
    _sign_in(page, served, "saf-lee")
    page.wait_for_selector(_card(plan))
    _load_key(page, served.key_file("saf-lee"))

    def tamper(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        raw = bytearray(base64.b64decode(body["signature"]))
        raw[0] ^= 1
        body["signature"] = base64.b64encode(bytes(raw)).decode()
        route.continue_(post_data=json.dumps(body))

    page.route("**/api/plans/*/decision", tamper)
    page.click(f"{_card(plan)} button.approve")
    page.wait_for_selector("#notice:has-text('refused')")
    assert "the signature does not verify with saf-lee's approver key" in page.inner_text("#notice")
    assert page.is_visible(_card(plan))
    with served.store() as store:
        assert store.runs.for_plan(plan).status == "awaiting_approval"
        assert store.approvals.for_plan(plan) == []
    (refusal,) = served.refusals(plan)
    assert refusal["via"] == "inbox" and "does not verify" in refusal["refused"]


def test_a_key_that_is_not_enrolled_does_not_count_through_the_page(
    served: Served, page: Page, tmp_path: Path
) -> None:
    served.enroll("saf-lee")
    plan = served.ask()
    minted = SigningKey.generate("saf-lee")
    path = save_key(tmp_path / "minted", minted)
    _sign_in(page, served, "saf-lee")
    page.wait_for_selector(_card(plan))
    state = _load_key(page, path)
    assert "not your enrolled approver key" in state and minted.key_id in state
    page.click(f"{_card(plan)} button.approve")
    page.wait_for_selector("#notice:has-text('refused')")
    assert (
        f"the key of saf-lee ({minted.key_id}) is not saf-lee's enrolled approver key"
        in page.inner_text("#notice")
    )
    with served.store() as store:
        assert store.approvals.for_plan(plan) == []
        assert store.runs.for_plan(plan).status == "awaiting_approval"
    (refusal,) = served.refusals(plan)
    assert minted.key_id in refusal["refused"]


def test_tampered_payloads_sent_to_the_api_do_not_count(served: Served, page: Page) -> None:
    served.enroll("saf-lee", "saf-ola")
    plan = served.ask()
    token = served.token("saf-lee")
    page.goto(served.url + "/")
    key = SigningKey.from_private_b64("saf-lee", served.key_file("saf-lee").read_text().strip())
    asked = _api(page, served, token, "POST", f"/api/plans/{plan}/to-sign", {"decision": "reject"})
    assert asked.status == 200, asked.text()
    payload = asked.json()["payload"]
    signature = base64.b64encode(key.private.sign(payload.encode())).decode()

    # The signature is over a rejection; the payload sent says approve.
    approve = payload.replace('"decision":"reject"', '"decision":"approve"')
    answer = _api(
        page, served, token, "POST", f"/api/plans/{plan}/decision",
        {"payload": approve, "signature": signature},
    )  # fmt: skip
    assert answer.status == 422 and "does not verify" in answer.json()["refused"]
    # saf-lee signs in but the record names saf-ola (signed with saf-ola's own key, even).
    ola = SigningKey.from_private_b64("saf-ola", served.key_file("saf-ola").read_text().strip())
    as_ola = payload.replace('"approver":"saf-lee"', '"approver":"saf-ola"')
    answer = _api(
        page, served, token, "POST", f"/api/plans/{plan}/decision",
        {"payload": as_ola, "signature": ola.sign(json.loads(as_ola))},
    )  # fmt: skip
    assert answer.status == 422
    assert "signed as saf-ola, but saf-lee is signed in" in answer.json()["refused"]
    # Not the canonical bytes handed out: what was signed is not what would be verified.
    spaced = json.dumps(json.loads(payload))
    answer = _api(
        page, served, token, "POST", f"/api/plans/{plan}/decision",
        {"payload": spaced, "signature": key.sign(json.loads(spaced))},
    )  # fmt: skip
    assert answer.status == 422 and "not the canonical JSON" in answer.json()["refused"]

    with served.store() as store:
        assert store.approvals.for_plan(plan) == []
        assert store.runs.for_plan(plan).status == "awaiting_approval"
    assert len(served.refusals(plan)) == 3

    # The untampered rejection, signed in the same way, counts: the checks are not blanket.
    answer = _api(
        page, served, token, "POST", f"/api/plans/{plan}/decision",
        {"payload": payload, "signature": signature},
    )  # fmt: skip
    assert answer.status == 200 and answer.json()["counted"] is True, answer.text()
    assert answer.json()["outcome"] == "rejected"


# --------------------------------------------------------------------------- who may see and decide


def test_a_person_without_the_role_neither_sees_nor_decides(served: Served, page: Page) -> None:
    served.enroll("rm-kim")
    plan = served.ask()
    _sign_in(page, served, "rm-kim")
    page.wait_for_selector("h2.count:has-text('no plans are waiting for your roles')")
    assert page.query_selector(_card(plan)) is None
    assert plan in page.inner_text("#run-list")  # the run itself is no secret

    token = served.token("rm-kim")
    seen = _api(page, served, token, "GET", f"/api/plans/{plan}")
    assert seen.status == 403 and "does not wait for a decision of rm-kim's roles" in seen.text()
    asked = _api(page, served, token, "POST", f"/api/plans/{plan}/to-sign", {"decision": "approve"})
    assert asked.status == 403
    key = SigningKey.from_private_b64("rm-kim", served.key_file("rm-kim").read_text().strip())
    from fieldgate.approvals import Approval, Decision

    with served.store() as store:
        plan_hash = store.plans.get(plan).plan_hash
    forged = Approval(
        plan_id=plan,
        plan_hash=plan_hash,
        approver="rm-kim",
        roles=["safety"],
        decision=Decision.approve,
        at="2026-01-01T00:00:00Z",
        key_id=key.key_id,
    )
    payload = json.dumps(forged.signing_payload(), sort_keys=True, separators=(",", ":"))
    answer = _api(
        page, served, token, "POST", f"/api/plans/{plan}/decision",
        {"payload": payload, "signature": key.sign(forged.signing_payload())},
    )  # fmt: skip
    assert answer.status == 403
    with served.store() as store:
        assert store.approvals.for_plan(plan) == []
    (refusal,) = served.refusals(plan)
    assert "does not wait for a decision of rm-kim's roles" in refusal["refused"]


def test_a_missing_or_wrong_token_gets_401(served: Served, page: Page) -> None:
    plan = served.ask()
    served.token("saf-lee")
    for token in (None, "", "fgi_not-a-token"):
        for path in ("/api/me", "/api/plans", f"/api/runs/{plan}", "/api/events"):
            response = _api(page, served, token, "GET", path)
            assert response.status == 401, (token, path, response.status)
            assert response.headers["www-authenticate"] == "Bearer"
        response = _api(
            page, served, token, "POST", f"/api/plans/{plan}/decision",
            {"payload": "{}", "signature": ""},
        )  # fmt: skip
        assert response.status == 401
    page.goto(f"{served.url}/#token=fgi_not-a-token")
    page.wait_for_selector("#sign-in:has-text('did not accept that token')")


# --------------------------------------------------------------------------- untrusted text


def test_untrusted_text_is_shown_as_text_and_never_run(served: Served, page: Page) -> None:
    served.enroll("eng-ana", "saf-lee")
    plan = served.ask(f"{HVAC} {EVIL}")
    # The requester's own approval does not count, but its comment is shown to approvers.
    code, out = invoke("approvals", "approve", plan, "--as", "eng-ana", "-m", EVIL)
    assert code == 1 and "does not count" in out, out
    _sign_in(page, served, "saf-lee")
    card = _card(plan)
    page.wait_for_selector(card)
    text = page.inner_text(card)
    assert text.count(EVIL) == 2, text  # the request and the comment, character for character
    assert page.evaluate("window.__pwned") is None
    assert page.query_selector_all(f"{card} script, {card} img") == []
    response = page.request.get(served.url + "/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "require-trusted-types-for 'script'" in policy
    assert "'unsafe-inline'" not in policy


# --------------------------------------------------------------------------- live updates


def test_the_list_updates_live_when_another_approver_decides_through_the_cli(
    served: Served, page: Page
) -> None:
    served.enroll("saf-lee", "saf-ola")
    plan = served.ask()
    _sign_in(page, served, "saf-lee")
    page.wait_for_selector(_card(plan))
    page.wait_for_selector("body[data-live='yes']")
    page.evaluate("window.__not_reloaded = true")

    code, out = invoke("approvals", "approve", plan, "--as", "saf-ola", "-m", "done")
    assert code == 0 and "counts" in out, out
    page.wait_for_selector(_card(plan), state="detached")
    page.wait_for_selector(f"#run-list li:has-text('{plan} queued')")
    assert page.evaluate("window.__not_reloaded") is True

    # A second plan arrives while the page is open: it appears without a reload.
    second = served.ask()
    page.wait_for_selector(_card(second))
    assert page.evaluate("window.__not_reloaded") is True


def test_the_run_page_follows_a_run_as_it_progresses(served: Served, page: Page) -> None:
    served.enroll("saf-ola")
    plan = served.ask()
    _sign_in(page, served, "saf-ola")
    page.goto(f"{served.url}/runs/{plan}")
    page.wait_for_selector("p.state:has-text('awaiting_approval')")
    assert "waiting for: 1× safety" in page.inner_text("#run")
    page.wait_for_selector("body[data-live='yes']")
    assert invoke("approvals", "approve", plan, "--as", "saf-ola")[0] == 0
    page.wait_for_selector("p.state:has-text('queued')")
    assert invoke("worker", "--once")[0] == 0
    page.wait_for_selector("p.state:has-text('completed')")
    assert "passed" in page.inner_text("table.waves")


def test_serve_refuses_to_bind_beyond_loopback_without_public(initialised_db: str) -> None:
    code, out = invoke("serve", "--host", "0.0.0.0")
    assert code == 2 and "add --public if you mean it" in out, out


def test_tokens_are_kept_hashed(initialised_db: str) -> None:
    code, out = invoke("serve", "token", "--as", "saf-lee")
    assert code == 0, out
    (made,) = [line for line in out.splitlines() if line.startswith("fgi_")]
    kept = (Config.from_env().home / "inbox-tokens.json").read_text()
    assert made not in kept and "saf-lee" in kept
    code, again = invoke("serve", "token", "--as", "saf-lee")
    from fieldgate.tokens import TOKENS_FILE, TokenBook

    book = TokenBook(Config.from_env().home / TOKENS_FILE)
    assert book.person(made) is None  # replaced
    (new,) = [line for line in again.splitlines() if line.startswith("fgi_")]
    assert book.person(new) == "saf-lee"

"""Untrusted text reaches people's terminals inert: control sequences, C1, bidi and markup.

Each attack puts the same hostile text where someone fieldgate does not trust can write it
(a request, a model's rationale, a manifest description, an approval comment, device and
site labels, eval results) and runs the command that shows it. The output must hold no raw
control or bidi character, and must show the visible form instead. Nothing is mocked: the
database is SQLite, the model the offline one (behind the OpenAI-compatible server where
the planner's rationale is rewritten).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fieldgate.audit import ActorKind, EventKind
from fieldgate.cli import app
from fieldgate.cli._output import console, errors
from fieldgate.evals import (
    CheckResult,
    EvalResults,
    LoadError,
    RunResult,
    ScenarioResult,
    render_html,
    summarize,
    terminal_report,
)
from fieldgate.store import Store
from fieldgate.terminal import shown

runner = CliRunner()

CLEAR = "\x1b[2J"
HIDDEN = "\x1b[8mhidden\x1b[0m"
TITLE = "\x1b]0;owned\x07"
LINK = "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\"
CSI8 = "\x9b31m"
BIDI = "\u202eevil\u202c \u2066iso\u2069 \u200e\u200f\u061c"
MARKUP = "[link=http://evil.example]markup[/link]"
ATTACK = " ".join((CLEAR, HIDDEN, TITLE, LINK, CSI8, BIDI, MARKUP))
"""Every kind of hostile text at once, as an attacker would put it in a field."""

RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""What must never reach the terminal (newline and tab are layout)."""
VISIBLE = ("␛[2J", "␛]8;;http://evil.example", "<U+009B>31m", "<U+202E>evil", MARKUP)
"""The visible forms of the attack that must show instead."""

HVAC = "Roll out hvac-controller 2.4.1 to muc-01"


def assert_inert(out: str, *, visible: tuple[str, ...] = VISIBLE) -> None:
    found = RAW.search(out)
    if found is not None:
        start = found.start()
        pytest.fail(f"raw {found.group()!r} reached the terminal: {out[start - 60 : start + 20]!r}")
    for form in visible:
        assert form in out, f"{form!r} not shown in:\n{out}"


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide console, so that no visible form is folded across lines of a table."""
    for output in (console, errors):
        monkeypatch.setattr(output, "_width", 2000)


@pytest.fixture
def db(initialised_db: str) -> str:
    """The sample deployment (see ``initialised_db``)."""
    return initialised_db


def newest_plan() -> str:
    with Store.open() as store:
        return store.runs.list()[-1].plan_id


# --------------------------------------------------------------------------- the helper


@pytest.mark.parametrize(
    ("raw", "visible"),
    [
        ("\x1b", "␛"),
        ("\x07", "␇"),
        ("\x00", "␀"),
        ("\x08", "␈"),
        ("\r", "␍"),
        ("\n", "␊"),
        ("\x7f", "␡"),
        ("\x9b", "<U+009B>"),
        ("\x80", "<U+0080>"),
        ("\x9f", "<U+009F>"),
        ("\u202e", "<U+202E>"),
        ("\u2066", "<U+2066>"),
        ("\u200f", "<U+200F>"),
        ("\u061c", "<U+061C>"),
        ("\u2028", "<U+2028>"),
    ],
)
def test_shown_makes_one_control_visible(raw: str, visible: str) -> None:
    assert shown(f"a{raw}b") == f"a{visible}b"


def test_shown_leaves_no_control_or_bidi_character_of_any_listed_class() -> None:
    every = (
        [chr(c) for c in range(0x20) if c not in (0x09, 0x0A)]
        + [chr(0x7F)]
        + [chr(c) for c in range(0x80, 0xA0)]
        + [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]
        + ["\u200e", "\u200f", "\u061c", "\n"]
    )
    for char in every:
        out = shown(char, markup=False)
        assert RAW.search(out) is None and out != char, repr(char)
    assert_inert(shown(ATTACK, markup=False))


def test_shown_keeps_layout_where_asked_and_escapes_markup() -> None:
    assert shown("a\tb") == "a\tb"
    assert shown("a\nb", multiline=True) == "a\nb"
    assert shown("a\r\nb", multiline=True) == "a␍\nb"
    assert shown("[red]x[/]") == "\\[red]x\\[/]"
    assert shown("[red]x[/]", markup=False) == "[red]x[/]"
    assert shown(None) == "None" and shown(3) == "3"


def test_ordinary_text_passes_unchanged() -> None:
    for text in (
        "Roll out hvac-controller 2.4.1 to muc-01, please!",
        "Zürich · São Paulo · Kraków · 東京 · القاهرة · Ελλάδα",
        "emoji 🚀 👩‍👩‍👧 🇩🇪 ✅",
        "punctuation: .,;:!?'\"()<>{}@#$%^&*-_=+/|~`",
    ):
        assert shown(text) == text
    # Every printable character of the Basic Multilingual Plane, one at a time.
    unsafe = {0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F)}
    unsafe |= set(range(0x2066, 0x206A))
    for code in range(0x20, 0x10000):
        char = chr(code)
        if 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or code in unsafe:
            continue
        assert shown(char, markup=False) == char, hex(code)


# --------------------------------------------------------------------------- requests


def test_a_hostile_request_is_inert_in_chat_approvals_audit_and_why(db: str) -> None:
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"{HVAC} {ATTACK}\n")
    assert code == 0, out
    assert_inert(out)
    plan = newest_plan()
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/plans\n/why {plan}\n/status {plan}\n")
    assert code == 0, out
    assert_inert(out)
    code, out = invoke("approvals", "show", plan)
    assert code == 0, out
    assert_inert(out)
    assert "“Roll out hvac-controller 2.4.1 to muc-01 ␛[2J" in out
    code, out = invoke("approvals", "list")
    assert code == 0 and plan in out
    assert_inert(out, visible=())
    code, out = invoke("audit", "show", plan)
    assert code == 0 and RAW.search(out) is None, out


def test_markup_in_an_audit_payload_stays_text(db: str) -> None:
    # JSON escapes the controls of a payload itself; rich markup in it was read as markup.
    with Store.open() as store:
        store.audit.append(EventKind.request, ActorKind.human, "eng-ana", {"text": MARKUP})
    code, out = invoke("audit", "show")
    assert code == 0, out
    assert_inert(out, visible=(MARKUP,))


def test_a_hostile_requester_id_is_inert(db: str) -> None:
    code, out = invoke("chat", "--as", f"eng-ana{CLEAR}{CSI8}\u202e", stdin=HVAC + "\n")
    assert code == 0, out
    for args in (("approvals", "list"), ("approvals", "show", newest_plan())):
        code, out = invoke(*args)
        assert code == 0, out
        assert_inert(out, visible=("eng-ana␛[2J<U+009B>31m<U+202E>",))


# --------------------------------------------------------------------------- approvals


def test_a_hostile_approval_comment_is_inert(db: str) -> None:
    code, out = invoke("chat", "--as", "eng-ana", stdin=HVAC + "\n")
    assert code == 0, out
    plan = newest_plan()
    assert invoke("keys", "init", "--as", "saf-lee")[0] == 0
    assert invoke("keys", "enroll", "saf-lee")[0] == 0  # by the root holder who ran init
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee", "-m", ATTACK)
    assert code == 0, out
    assert_inert(out, visible=())
    for args, stdin in (
        (("approvals", "show", plan), None),
        (("chat", "--as", "eng-ana"), f"/why {plan}\n"),
    ):
        code, out = invoke(*args, stdin=stdin)
        assert code == 0, out
        assert_inert(out)
    code, out = invoke("audit", "show", plan)
    assert code == 0 and RAW.search(out) is None, out


# --------------------------------------------------------------------------- a model's text


class HostilePlanner:
    """The offline model behind the server, with the planner's rationale rewritten."""

    def __init__(self) -> None:
        from fieldgate.agents.offline.server.backends import OfflineBackend

        self.inner = OfflineBackend()

    def reply(self, request: Mapping[str, Any]) -> Any:
        """Answer as the offline model; put the attack into every plan's rationale."""
        from fieldgate.agents.offline.server.wire import request_role

        reply = self.inner.reply(request)
        if request_role(request) == "planner" and reply.body:
            for call in reply.body["choices"][0]["message"].get("tool_calls") or []:
                decision = json.loads(call["function"]["arguments"])
                if decision.get("plan"):
                    decision["plan"]["rationale"] = f"Install it.\n{ATTACK}"
                    call["function"]["arguments"] = json.dumps(decision)
        return reply


@pytest.fixture
def hostile_model(db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from fieldgate.agents.offline.server import model_server

    with model_server(HostilePlanner()) as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield "openai:offline"


def test_a_hostile_rationale_is_inert_in_chat_and_in_the_approval_request(
    hostile_model: str,
) -> None:
    code, out = invoke("chat", "--as", "eng-ana", "--model", hostile_model, stdin=HVAC + "\n")
    assert code == 0, out
    assert "planner (revision 1):" in out
    assert_inert(out)
    plan = newest_plan()
    code, out = invoke("approvals", "show", plan)
    assert code == 0, out
    assert_inert(out)
    code, out = invoke("approvals", "show", plan, "--request")
    assert code == 0, out
    # the approval request is Markdown: its link syntax stays text, never a hidden hyperlink
    assert_inert(out, visible=("␛[2J", "<U+009B>31m", "<U+202E>evil", "http://evil.example"))
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/why {plan}\n")
    assert code == 0, out
    assert_inert(out)


def test_a_rationale_stored_in_the_audit_is_inert_in_why(db: str) -> None:
    invoke("chat", "--as", "eng-ana", stdin=HVAC + "\n")
    plan = newest_plan()
    with Store.open() as store:
        store.audit.append(
            EventKind.rationale,
            ActorKind.agent,
            "planner",
            {"revision": 2, "rationale": f"first line\n{ATTACK}"},
            plan_id=plan,
        )
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/why {plan}\n")
    assert code == 0, out
    assert_inert(out)


# --------------------------------------------------------------------------- catalog and fleet

MANIFEST = """\
kind: Module
name: demo-mod
version: 1.0.0
safety: low
device_classes: [x]
arch: [arm64]
artifact: {{uri: 'oci://x', digest: 'sha256:{digest}'}}
description: {description}
"""


def test_a_hostile_manifest_description_is_inert_in_catalog_show(db: str, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    description = json.dumps(f"line one\n{ATTACK}")  # a JSON string is a YAML string
    path.write_text(MANIFEST.format(digest="a" * 64, description=description), encoding="utf-8")
    code, out = invoke("catalog", "import", str(path))
    assert code == 0, out
    assert_inert(out, visible=())
    code, out = invoke("catalog", "show", "demo-mod")
    assert code == 0, out
    assert_inert(out)
    assert "line one" in out  # the description keeps its lines
    code, out = invoke("catalog", "list")
    assert code == 0 and RAW.search(out) is None


INVENTORY = """\
sites:
  - {{id: evil-01, region: eu-west, timezone: Europe/Paris, labels: {{note: {note}}}}}
devices:
  - {{id: evil-01-a, site: evil-01, class: pump-ctl, arch: {note}, memory_mb: 512,
     labels: {{note: {note}, {note}: x}}}}
"""


def test_hostile_device_and_site_labels_are_inert_in_fleet_show(db: str, tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(INVENTORY.format(note=json.dumps(ATTACK)), encoding="utf-8")
    code, out = invoke("fleet", "import", str(path))
    assert code == 0, out
    for ident in ("evil-01", "evil-01-a"):
        code, out = invoke("fleet", "show", ident)
        assert code == 0, out
        assert_inert(out, visible=("␛[2J", "<U+009B>31m", "<U+202E>evil", MARKUP))
    code, out = invoke("fleet", "list", "--site", "evil-01")
    assert code == 0, out
    assert_inert(out)


# --------------------------------------------------------------------------- eval reports


def hostile_results() -> EvalResults:
    run = RunResult(
        seed=0,
        passed=False,
        outcome=ATTACK,
        reasons=[ATTACK],
        failed_checks=[CheckResult(check="outcome", passed=False, expected="x", actual=ATTACK)],
        error=ATTACK,
    )
    scenario = ScenarioResult(
        id=f"s-{CSI8}", category=ATTACK, file="x.yaml", request=ATTACK, runs=[run]
    )
    return summarize(
        [scenario],
        [LoadError(file="bad.yaml", error=f"bad.yaml: {ATTACK}")],
        k=1,
        seed=0,
        model=ATTACK,
        wall_time_s=0.1,
    )


def test_the_eval_terminal_report_and_compare_are_inert(tmp_path: Path) -> None:
    results = hostile_results()
    buffer = io.StringIO()
    Console(file=buffer, width=2000, color_system=None).print(terminal_report(results))
    assert_inert(buffer.getvalue(), visible=("␛[2J", "<U+009B>31m", "<U+202E>evil", MARKUP))
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(results.to_json(), encoding="utf-8")
    new.write_text(results.to_json(), encoding="utf-8")
    code, out = invoke("eval", "compare", str(old), str(new), "--all")
    assert RAW.search(out) is None, out
    assert "<U+009B>" in out, out
    assert code in (0, 1)


def test_the_html_report_escapes_html_and_shows_controls(tmp_path: Path) -> None:
    html = render_html(hostile_results())
    assert RAW.search(html) is None
    assert "␛[2J" in html and "&lt;U+202E&gt;evil" in html

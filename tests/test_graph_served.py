"""The graph ``langgraph.json`` exposes, served by ``langgraph dev`` and driven by langgraph-sdk.

A client that knows only the LangGraph API creates a thread, starts a rollout run,
reads the approval interrupt in langchain's human-in-the-loop shape and resumes it
by interrupt id: an unsigned decision is refused, a signed one is counted and the
run is queued for a worker. The server builds fieldgate's context from the
environment (``FIELDGATE_DB``, ``FIELDGATE_HOME``), as it would in production.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.schema import ThreadState

from fieldgate.approvals import Approval, Decision
from fieldgate.audit import EventKind
from fieldgate.graphs.approval import ApprovalResume, ReviewDecision
from fieldgate.signing import SigningKey
from fieldgate.store import Store

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REQUEST = "Roll out hvac-controller 2.4.1 to muc-01"


@dataclass
class Served:
    url: str
    db_url: str
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [str(BIN / "fieldgate"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cli = BIN / "langgraph"
    if not cli.exists():
        message = "langgraph-cli[inmem] is not installed (it comes with the dev extra)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path_factory.mktemp("served")
    db_url = f"sqlite:///{home}/fieldgate.db"
    env = {
        **os.environ,
        "FIELDGATE_HOME": str(home),
        "FIELDGATE_DB": db_url,
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
    }
    env.pop("FIELDGATE_ROSTER", None)
    _run(env, "init")
    _run(env, "keys", "init", "--as", "saf-lee")
    _run(env, "keys", "enroll", "saf-lee")  # by the root holder who ran init
    # The repository's langgraph.json with its paths made absolute, so that the server's
    # own state (.langgraph_api) goes to the test's directory and not the checkout.
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str(ROOT / d) for d in config["dependencies"]]
    config["graphs"] = {name: str(ROOT / spec) for name, spec in config["graphs"].items()}
    (home / "langgraph.json").write_text(json.dumps(config))
    port = _free_port()
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(cli),
            "dev",
            "--config",
            str(home / "langgraph.json"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-browser",
            "--no-reload",
        ],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("langgraph dev did not start:\n" + (home / "server.log").read_text())
            time.sleep(0.2)
        yield Served(url, db_url, env)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _values(state: ThreadState) -> dict[str, Any]:
    """The graph state of a thread; the SDK also allows a list, which this graph never has."""
    values = state["values"]
    assert isinstance(values, dict)
    return values


def _signed(values: dict[str, Any], home: str) -> dict[str, Any]:
    """saf-lee's signed approval of the plan revision in ``values``, as an interrupt answer."""
    key_file = Path(home) / "keys" / "saf-lee.key"  # made by `fieldgate keys init --as saf-lee`
    key = SigningKey.from_private_b64("saf-lee", key_file.read_text().strip())
    approval = Approval(
        plan_id=values["plan_id"],
        plan_hash=values["plan_hash"],
        approver="saf-lee",
        roles=[],
        decision=Decision.approve,
        comment="approved through the API",
        at=datetime.now(UTC),
    ).signed_with(key)
    return ApprovalResume(
        decisions=[ReviewDecision(type="approve", message=approval.comment)],
        approver="saf-lee",
        approval=approval,
    ).model_dump(mode="json")


def test_an_api_client_reads_the_approval_interrupt_and_resumes_it(served: Served) -> None:
    client = get_sync_client(url=served.url)
    thread_id = client.threads.create()["thread_id"]

    client.runs.wait(thread_id, "rollout", input={"request": REQUEST, "actor": "eng-ana"})
    state = client.threads.get_state(thread_id)
    assert state["next"] == ["approval"]
    (pending,) = state["interrupts"]
    request = pending["value"]
    assert [a["name"] for a in request["action_requests"]] == ["execute_rollout_plan"]
    assert "### Plan" in request["action_requests"][0]["description"]
    assert request["review_configs"][0]["allowed_decisions"] == ["approve", "edit", "reject"]
    assert request["approvals_missing"] == [{"role": "safety", "count": 1}]
    assert pending["response_schema"]["required"] == ["decisions", "approver"]
    values = _values(state)
    assert values["plan_hash"] == request["plan_hash"]

    # A decision without a signed approval is refused: the run keeps waiting.
    unsigned = {"decisions": [{"type": "approve"}], "approver": "saf-lee"}
    client.runs.wait(thread_id, "rollout", command={"resume": {pending["id"]: unsigned}})
    state = client.threads.get_state(thread_id)
    assert state["next"] == ["approval"]
    assert not _values(state).get("approved")
    (pending,) = state["interrupts"]

    # A signed approval by a safety approver fills the quorum: the run is queued.
    home = served.env["FIELDGATE_HOME"]
    answer = _signed(values, home)
    client.runs.wait(thread_id, "rollout", command={"resume": {pending["id"]: answer}})
    state = client.threads.get_state(thread_id)
    assert state["next"] == ["executor"]
    assert _values(state)["approved"] is True
    assert _values(state)["approvals"]["counted"] == ["saf-lee"]

    # The run, its request and both answers are on fieldgate's own record.
    with Store.open(served.db_url) as store:
        run = store.runs.get(thread_id)
        assert (run.request, run.actor, run.status) == (REQUEST, "eng-ana", "queued")
        events = store.audit.events(plan_id=values["plan_id"])
        assert [e.kind for e in events if e.kind == EventKind.request] == [EventKind.request]
        approvals = [e.payload for e in events if e.kind == EventKind.approval]
        assert approvals[0]["refused"].startswith("an approve or reject decision must carry")
        assert approvals[-1]["approver"] == "saf-lee"
        assert store.audit.verify().ok


def test_the_served_graph_declares_its_input_and_names_a_missing_field(served: Served) -> None:
    client = get_sync_client(url=served.url)
    (assistant,) = client.assistants.search(graph_id="rollout")
    schemas = client.assistants.get_schemas(assistant["assistant_id"])
    input_schema = schemas["input_schema"]
    assert input_schema is not None and input_schema["required"] == ["request"]
    assert input_schema["properties"]["actor"]["anyOf"][0]["pattern"]

    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, "rollout", input={"request": REQUEST})
    client.runs.join(thread_id, run["run_id"])
    finished = client.runs.get(thread_id, run["run_id"])
    assert finished["status"] == "error"
    log = (Path(served.env["FIELDGATE_HOME"]) / "server.log").read_text()
    assert "rollout input: actor: Field required" in log
    assert "KeyError" not in log
    with Store.open(served.db_url) as store:
        assert not store.runs.exists(thread_id)

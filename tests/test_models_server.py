"""The OpenAI-compatible model server, its replay mode, ``make_model`` and ``serve-model``.

Every request goes through a real ``openai`` client (or langchain-openai's ``ChatOpenAI``)
to a server on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from typer.testing import CliRunner

from fieldgate.agents._prompting import json_section
from fieldgate.agents._structured import call_structured
from fieldgate.agents.models import make_model
from fieldgate.agents.offline import OfflineChatModel
from fieldgate.agents.offline.server import (
    OfflineBackend,
    Recording,
    ReplayBackend,
    model_server,
    request_role,
)
from fieldgate.agents.planner import PlannerDecision
from fieldgate.agents.validator import ValidatorReview
from fieldgate.cli import app
from fieldgate.config import DEFAULT_MODEL_RETRIES as DEFAULT_RETRIES
from fieldgate.config import DEFAULT_MODEL_TIMEOUT_S as DEFAULT_TIMEOUT_S
from fieldgate.errors import (
    ModelCallFailed,
    ModelOutputInvalid,
    ModelUnavailable,
    RecordingInvalid,
    RequestInvalid,
)
from fieldgate.tools import tool_specs
from fieldgate.usage import total_tokens

RECORDED = Path(__file__).parent / "recorded"

SITUATION = json_section(
    "situation",
    {"next_wave": 0, "kill_switch": False, "paused": False, "abort": {"tripped": False}},
)
REVIEW_PROMPT = "\n\n".join(
    [
        json_section("findings", {"problems": [], "warnings": ["w1"]}),
        json_section(
            "dry_run", {"targets": 6, "waves": [{}, {}], "predicted_minutes": 53, "blast_radius": 1}
        ),
        "Answer with one ValidatorReview call.",
    ]
)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """The offline model served on a free loopback port."""
    with model_server() as base_url:
        yield base_url


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="test", max_retries=0, timeout=10)


def executor_call(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="offline",
        messages=[{"role": "user", "content": SITUATION}],
        tools=tool_specs(),  # type: ignore[arg-type]
        **extra,
    )


# --------------------------------------------------------------------------- the protocol


def test_binds_loopback_and_lists_the_offline_model(url: str, client: openai.OpenAI) -> None:
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert [m.id for m in client.models.list()] == ["offline"]
    assert client.models.retrieve("offline").id == "offline"
    assert httpx.get(url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_chat_answer_carries_usage(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="offline",
        messages=[
            {"role": "system", "content": "You are fieldgate."},
            {"role": "user", "content": [{"type": "text", "text": "what can you do?"}]},
        ],
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert "roll out" in (choice.message.content or "")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_tool_call_round_trip(client: openai.OpenAI) -> None:
    answer = executor_call(client, tool_choice="auto")
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "deploy_wave"
    assert json.loads(call.function.arguments) == {"wave": 0}
    # The tool's result goes back with the call's id, as any agent loop sends it.
    follow_up = client.chat.completions.create(
        model="offline",
        messages=[
            {"role": "user", "content": SITUATION},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"wave": 0, "gate": "passed"}'},
        ],
        tools=tool_specs(),  # type: ignore[arg-type]
    )
    assert follow_up.choices[0].message.tool_calls is not None


def test_streaming_sends_the_same_answer_in_chunks_then_usage(client: openai.OpenAI) -> None:
    whole = executor_call(client)
    chunks = list(executor_call(client, stream=True, stream_options={"include_usage": True}))
    arguments, names, finish = "", [], None
    for chunk in chunks[:-1]:
        delta = chunk.choices[0].delta
        for piece in delta.tool_calls or []:
            names += [piece.function.name] if piece.function.name else []
            arguments += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    expected = whole.choices[0].message.tool_calls[0]
    assert names == [expected.function.name]
    assert json.loads(arguments) == json.loads(expected.function.arguments)
    assert finish == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_structured_output_through_a_json_schema(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="offline",
        messages=[{"role": "user", "content": REVIEW_PROMPT}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "ValidatorReview",
                "schema": ValidatorReview.model_json_schema(),
            },
        },
    )
    review = ValidatorReview.model_validate_json(answer.choices[0].message.content or "")
    assert review.verdict == "accept" and review.concerns == ["w1"]
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        (
            [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{"},
                        }
                    ],
                },
                {"role": "user", "content": "and?"},
            ],
            "must be followed by tool messages",
        ),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "c9", "content": ""},
            ],
            "must respond to a tool call",
        ),
        ([{"role": "wizard", "content": "x"}], "unknown role"),
        ([], "non-empty list"),
    ],
)
def test_malformed_requests_get_400(
    client: openai.OpenAI, messages: list[dict[str, Any]], says: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=says):
        client.chat.completions.create(model="offline", messages=messages)  # type: ignore[arg-type]


class _Broken:
    def reply(self, request: Any) -> Any:
        raise RuntimeError("backend bug")


def test_a_failing_backend_answers_500() -> None:
    with model_server(_Broken()) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="RuntimeError: backend bug"):
            client.chat.completions.create(
                model="offline", messages=[{"role": "user", "content": "x"}]
            )


def test_bad_response_format_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="response_format must be an object"):
        client.chat.completions.create(
            model="offline",
            messages=[{"role": "user", "content": "x"}],
            # A string where the API takes an object: sent as is, past the client's types.
            extra_body={"response_format": "json"},
        )


def test_unknown_route_is_404(url: str) -> None:
    response = httpx.post(url + "/completions", json={"prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_api_key_is_required_when_set() -> None:
    with model_server(api_key="s3cret") as base_url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        right = openai.OpenAI(base_url=base_url, api_key="s3cret", max_retries=0)
        assert [m.id for m in right.models.list()] == ["offline"]


# --------------------------------------------------------------------------- ChatOpenAI


@pytest.fixture
def openai_env(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    return url


@pytest.mark.parametrize("streaming", [False, True])
def test_chat_openai_gets_tool_calls_and_usage(openai_env: str, streaming: bool) -> None:
    model = make_model("openai:offline")
    if streaming:
        # LangGraph's messages stream mode makes every model call stream like this.
        model = model.model_copy(update={"streaming": True})
    offline = OfflineChatModel().bind_tools(tool_specs()).invoke([HumanMessage(SITUATION)])
    answer = model.bind_tools(tool_specs()).invoke([HumanMessage(SITUATION)])
    assert isinstance(answer, AIMessage) and isinstance(offline, AIMessage)
    assert [(c["name"], c["args"]) for c in answer.tool_calls] == [("deploy_wave", {"wave": 0})]
    assert answer.usage_metadata is not None and offline.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == offline.usage_metadata["input_tokens"]
    assert answer.usage_metadata["output_tokens"] == offline.usage_metadata["output_tokens"]


def test_call_structured_through_chat_openai(openai_env: str) -> None:
    call = call_structured(
        make_model("openai:offline"), [HumanMessage(REVIEW_PROMPT)], ValidatorReview
    )
    assert call.value.verdict == "accept" and call.errors == []
    assert call.usage.calls == 1 and call.usage.input_tokens > 0


def test_call_structured_feeds_errors_back_then_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = ReplayBackend.from_file(RECORDED / "planner-schema-violation.json")
    with model_server(backend) as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        model = make_model("openai:offline", max_retries=0)
        with pytest.raises(ModelOutputInvalid, match=r"plan\.waves: Field required") as raised:
            call_structured(model, [HumanMessage("plan it")], PlannerDecision, retries=2)
    assert len(backend.exchanges) == 3
    assert raised.value.usage.calls == 3 and raised.value.usage.input_tokens == 3 * 701
    assert len(raised.value.rejected()) == 3
    # Each retry answers the refused call with a tool message naming the error.
    last = backend.exchanges[-1].request["messages"]
    assert [m["role"] for m in last[-4:]] == ["assistant", "tool", "assistant", "tool"]
    assert "Field required" in last[-1]["content"]


def test_call_failed_names_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    recording = Recording.load(RECORDED / "rate-limited.json")
    recording.replies[0].role, recording.replies[0].repeat = "any", 5
    backend = ReplayBackend(recording)
    with model_server(backend) as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        model = make_model("openai:offline", timeout_s=5, max_retries=1)
        with pytest.raises(ModelCallFailed, match=r"timeout 5 s, 2 attempts.*RateLimit"):
            call_structured(model, [HumanMessage(REVIEW_PROMPT)], ValidatorReview)
    assert len(backend.exchanges) == 2


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("path", sorted(RECORDED.glob("*.json")), ids=lambda p: p.stem)
def test_recordings_load_and_name_their_roles(path: Path) -> None:
    recording = Recording.load(path)
    assert recording.description and recording.replies
    for reply in recording.replies:
        assert reply.offline or reply.body is not None or reply.raw is not None
        assert reply.role != "any"


def test_replay_answers_each_role_in_order_then_falls_back(client: openai.OpenAI) -> None:
    recording = Recording.model_validate(
        {
            "replies": [
                {"role": "executor", "offline": True},
                {"role": "executor", "status": 503, "body": {"error": {"message": "busy"}}},
                {"role": "chat", "raw": "not json", "status": 502},
            ]
        }
    )
    backend = ReplayBackend(recording)
    with model_server(backend) as base_url:
        replay = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        assert executor_call(replay).choices[0].finish_reason == "tool_calls"
        with pytest.raises(openai.InternalServerError, match="busy"):
            executor_call(replay)
        with pytest.raises(openai.APIStatusError):
            replay.chat.completions.create(
                model="offline", messages=[{"role": "user", "content": "hi"}]
            )
        assert executor_call(replay).choices[0].finish_reason == "tool_calls"
    assert [(e.role, e.recorded) for e in backend.exchanges] == [
        ("executor", 0),
        ("executor", 1),
        ("chat", 2),
        ("executor", None),
    ]
    assert backend.unused() == []


def test_request_role_reads_the_bound_tools() -> None:
    assert request_role({"tools": tool_specs()}) == "executor"
    assert request_role({}) == "chat"
    schema = {"name": "PlannerDecision", "schema": {}}
    assert request_role({"response_format": {"type": "json_schema", "json_schema": schema}}) == (
        "planner"
    )


def test_bad_recording_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"replies": [{"role": "oracle", "repeat": 0}]}))
    with pytest.raises(
        RecordingInvalid, match=r"bad\.json: replies\.0\.role: .*replies\.0\.repeat"
    ):
        Recording.load(bad)


def test_offline_backend_refuses_unknown_tool_choice() -> None:
    request = {
        "messages": [{"role": "user", "content": SITUATION}],
        "tools": tool_specs(),
        "tool_choice": {"type": "function", "function": {"name": "nope"}},
    }
    with pytest.raises(RequestInvalid, match="not a tool"):
        OfflineBackend().reply(request)


# --------------------------------------------------------------------------- make_model


def test_make_model_defaults_to_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIELDGATE_MODEL", raising=False)
    assert isinstance(make_model(), OfflineChatModel)
    monkeypatch.setenv("FIELDGATE_MODEL", "openai:gpt-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    model = make_model()
    assert type(model).__name__ == "ChatOpenAI"
    assert model.model_name == "gpt-test"  # type: ignore[attr-defined]


def test_make_model_reads_timeout_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("FIELDGATE_MODEL_TIMEOUT", raising=False)
    monkeypatch.delenv("FIELDGATE_MODEL_RETRIES", raising=False)
    model: Any = make_model("openai:m")
    assert (model.request_timeout, model.max_retries) == (DEFAULT_TIMEOUT_S, DEFAULT_RETRIES)
    assert model.openai_api_base == "http://127.0.0.1:9/v1" and model.use_responses_api is False
    monkeypatch.setenv("FIELDGATE_MODEL_TIMEOUT", "2.5")
    monkeypatch.setenv("FIELDGATE_MODEL_RETRIES", "0")
    model = make_model("openai:m")
    assert (model.request_timeout, model.max_retries) == (2.5, 0)
    model = make_model("openai:m", timeout_s=1, max_retries=4)
    assert (model.request_timeout, model.max_retries) == (1, 4)


@pytest.mark.parametrize(
    ("name", "env", "says"),
    [
        ("gpt-4o", {}, "unknown model 'gpt-4o'"),
        ("openai:", {}, "unknown model 'openai:'"),
        ("openai:m", {"OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""}, "needs OPENAI_API_KEY"),
        ("openai:m", {"FIELDGATE_MODEL_TIMEOUT": "soon"}, "FIELDGATE_MODEL_TIMEOUT='soon'"),
        ("openai:m", {"FIELDGATE_MODEL_TIMEOUT": "0"}, "FIELDGATE_MODEL_TIMEOUT='0'"),
        ("openai:m", {"FIELDGATE_MODEL_RETRIES": "-1"}, "FIELDGATE_MODEL_RETRIES='-1'"),
    ],
)
def test_make_model_refuses_what_it_cannot_build(
    monkeypatch: pytest.MonkeyPatch, name: str, env: dict[str, str], says: str
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ModelUnavailable, match=says):
        make_model(name)


def test_total_tokens_adds_up_nodes() -> None:
    by_node = {
        "planner": {"input": 10, "output": 5, "calls": 1},
        "executor": {"input": 7, "output": 1, "calls": 2},
    }
    assert total_tokens(by_node) == {"input": 17, "output": 6, "calls": 3}
    assert total_tokens({}) == {"input": 0, "output": 0, "calls": 0}


# --------------------------------------------------------------------------- the command


def test_serve_model_command_serves_until_stopped(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    command = [sys.executable, "-c", "from fieldgate.cli import main; main()"]
    process = subprocess.Popen(
        [*command, "serve-model", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("serving the offline model at http://127.0.0.1:"), first
        base_url = first.split(" at ")[1].strip()
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=10)
        assert executor_call(client).choices[0].message.tool_calls[0].function.name == (
            "deploy_wave"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_model_refuses_a_bad_recording(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = CliRunner().invoke(app, ["serve-model", "--port", "0", "--replay", str(bad)])
    assert result.exit_code == 1
    assert "bad.json: replies: Field required" in result.output


def test_serve_model_port_in_use_is_a_clear_error() -> None:
    with model_server() as base_url:
        port = base_url.rsplit(":", 1)[1].split("/")[0]
        started = time.monotonic()
        result = CliRunner().invoke(app, ["serve-model", "--port", port])
    assert result.exit_code == 1 and f"cannot serve on 127.0.0.1:{port}" in result.output
    assert time.monotonic() - started < 10

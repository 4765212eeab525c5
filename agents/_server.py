"""An OpenAI-compatible chat-completions server backed by the offline model, and its replay mode.

Any OpenAI client (the ``openai`` package, langchain-openai's ``ChatOpenAI``, curl) can
talk to it: ``POST /v1/chat/completions`` with messages (system, user, assistant with
``tool_calls``, tool with ``tool_call_id``), ``tools``, ``tool_choice``,
``response_format`` and ``stream`` (server-sent events, with a usage chunk when
``stream_options.include_usage`` is set), and ``GET /v1/models``. Answers carry
``tool_calls`` with JSON-string arguments, ``finish_reason`` and ``usage``.

The replay backend answers from a recording first (``tests/recorded/*.json``): malformed
output, error statuses and hangs, in order, each meant for the planner, the validator,
the executor or any caller; when no recorded reply is left for a request, the offline
model answers it. That lets tests drive the real ``openai`` client path through
retries, timeouts and output validation without a network.

The server binds to loopback unless told otherwise. It is a threaded stdlib
``http.server``: one thread per connection, keep-alive, no dependencies.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from pydantic import BaseModel, Field, ValidationError

from fieldgate.agents.offline import OfflineChatModel
from fieldgate.errors import FieldgateError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
"""The default address: reachable from this machine only."""
OFFLINE_MODEL_ID = "offline"
"""The model id ``GET /v1/models`` lists (any requested name is answered)."""

Role = Literal["planner", "validator", "executor", "chat"]
"""Which agent a request comes from, told apart by the tools it binds."""


class RequestInvalid(FieldgateError):
    """A chat-completions request the server cannot answer (sent back as HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class RecordingInvalid(FieldgateError):
    """A recorded-responses file does not follow its format."""


# --------------------------------------------------------------------------- replies


@dataclass
class Reply:
    """What the server sends for one request."""

    status: int = 200
    """HTTP status."""
    body: dict[str, Any] | None = None
    """JSON body: a ``chat.completion`` for 200, an ``{"error": …}`` object otherwise."""
    raw: str | None = None
    """A body sent verbatim instead of ``body`` (e.g. text that is not JSON)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra headers (``retry-after-ms`` for a 429)."""
    delay_s: float = 0.0
    """Seconds to wait before answering (longer than the client's timeout: a hang)."""


class Backend(Protocol):
    """Answers parsed chat-completions requests."""

    def reply(self, request: Mapping[str, Any]) -> Reply:
        """The reply to ``request`` (a parsed ``/v1/chat/completions`` body)."""
        ...


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """An error in the OpenAI format."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def request_role(request: Mapping[str, Any]) -> Role:
    """Which agent sent ``request``: the planner and validator bind their schema as a tool."""
    names = {
        str(t.get("function", {}).get("name"))
        for t in request.get("tools") or []
        if isinstance(t, dict)
    }
    response_format = request.get("response_format") or {}
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        names.add(str((response_format.get("json_schema") or {}).get("name")))
    if "PlannerDecision" in names:
        return "planner"
    if "ValidatorReview" in names:
        return "validator"
    return "executor" if request.get("tools") else "chat"


# --------------------------------------------------------------------------- OpenAI → langchain


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestInvalid(f"{where}: only text content parts are supported", where)
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise RequestInvalid(f"{where}: content must be a string or a list of parts", where)


def _assistant(raw: Mapping[str, Any], where: str) -> AIMessage:
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for index, call in enumerate(raw.get("tool_calls") or []):
        function = call.get("function") or {}
        call_id, name = call.get("id"), function.get("name")
        if not call_id or not name:
            raise RequestInvalid(f"{where}.tool_calls[{index}] needs an id and a function name")
        arguments = function.get("arguments") or "{}"
        try:
            args = json.loads(arguments)
        except ValueError as exc:
            invalid.append(
                InvalidToolCall(
                    name=name, args=arguments, id=call_id, error=str(exc), type="invalid_tool_call"
                )
            )
            continue
        if not isinstance(args, dict):
            args = {"value": args}
        calls.append(ToolCall(name=name, args=args, id=call_id, type="tool_call"))
    return AIMessage(
        content=_text(raw.get("content"), where), tool_calls=calls, invalid_tool_calls=invalid
    )


def to_langchain(messages: Any) -> list[BaseMessage]:
    """Translate OpenAI chat messages, checking tool calls are answered as OpenAI does."""
    if not isinstance(messages, list) or not messages:
        raise RequestInvalid("messages must be a non-empty list", "messages")
    converted: list[BaseMessage] = []
    pending: list[str] = []
    for index, raw in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            raise RequestInvalid(f"{where} must be an object", where)
        role = raw.get("role")
        if pending and role != "tool":
            raise RequestInvalid(
                "an assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id'; not answered: {', '.join(pending)}",
                where,
            )
        if role in ("system", "developer"):
            converted.append(SystemMessage(_text(raw.get("content"), where)))
        elif role == "user":
            converted.append(HumanMessage(_text(raw.get("content"), where)))
        elif role == "assistant":
            message = _assistant(raw, where)
            pending = [str(c["id"]) for c in (*message.tool_calls, *message.invalid_tool_calls)]
            converted.append(message)
        elif role == "tool":
            call_id = raw.get("tool_call_id")
            if call_id not in pending:
                raise RequestInvalid(
                    f"{where}: a 'tool' message must respond to a tool call of the preceding "
                    f"assistant message (tool_call_id {call_id!r})",
                    where,
                )
            pending.remove(call_id)
            converted.append(ToolMessage(_text(raw.get("content"), where), tool_call_id=call_id))
        else:
            raise RequestInvalid(f"{where}: unknown role {role!r}", where)
    if pending:
        raise RequestInvalid(f"tool calls not answered: {', '.join(pending)}", "messages")
    return converted


# --------------------------------------------------------------------------- langchain → OpenAI


_ids = itertools.count(1)


def completion(message: AIMessage, model: str, *, content_only: bool = False) -> dict[str, Any]:
    """A ``chat.completion`` body for ``message``, with its usage.

    With ``content_only`` the first tool call's arguments become the content (structured
    output through ``response_format``).
    """
    content = message.content if isinstance(message.content, str) else json.dumps(message.content)
    tool_calls: list[dict[str, Any]] = [
        {
            "id": call["id"] or f"call_{index}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["args"])},
        }
        for index, call in enumerate(message.tool_calls)
    ]
    if content_only and message.tool_calls:
        content, tool_calls = json.dumps(message.tool_calls[0]["args"]), []
    answer: dict[str, Any] = {"role": "assistant", "content": content or None, "refusal": None}
    if tool_calls:
        answer["tool_calls"] = tool_calls
    usage = message.usage_metadata or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    return {
        "id": f"chatcmpl-{next(_ids):08d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fieldgate-offline",
        "choices": [
            {
                "index": 0,
                "message": answer,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage["input_tokens"],
            "completion_tokens": usage["output_tokens"],
            "total_tokens": usage["total_tokens"],
        },
    }


def stream_chunks(body: Mapping[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """A ``chat.completion`` as the ``chat.completion.chunk`` events a streaming client reads."""
    base = {
        "id": body.get("id", "chatcmpl-stream"),
        "object": "chat.completion.chunk",
        "created": body.get("created", int(time.time())),
        "model": body.get("model", OFFLINE_MODEL_ID),
        "system_fingerprint": body.get("system_fingerprint"),
    }
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    yield chunk({"role": "assistant", "content": ""})
    content = message.get("content") or ""
    for start in range(0, len(content), 64):
        yield chunk({"content": content[start : start + 64]})
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        head = {"name": function.get("name"), "arguments": ""}
        yield chunk(
            {
                "tool_calls": [
                    {"index": index, "id": call.get("id"), "type": "function", "function": head}
                ]
            }
        )
        arguments = function.get("arguments") or ""
        # Arguments arrive in pieces, as real servers send them: clients must join them.
        for start in range(0, len(arguments), 256):
            piece = {"arguments": arguments[start : start + 256]}
            yield chunk({"tool_calls": [{"index": index, "function": piece}]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if include_usage:
        yield {**base, "choices": [], "usage": body.get("usage")}


# --------------------------------------------------------------------------- backends


class OfflineBackend:
    """Answers every request with the offline model, as an OpenAI endpoint would."""

    def __init__(self, model: BaseChatModel | None = None) -> None:
        self.model = model or OfflineChatModel()

    def reply(self, request: Mapping[str, Any]) -> Reply:
        """Translate the request, call the model with its tools, answer in the OpenAI format."""
        messages = to_langchain(request.get("messages"))
        if (request.get("n") or 1) != 1:
            raise RequestInvalid("only n=1 is supported", "n")
        tools = list(request.get("tools") or [])
        tool_choice = request.get("tool_choice")
        content_only = False
        response_format = request.get("response_format") or {}
        if not isinstance(response_format, dict):
            raise RequestInvalid("response_format must be an object", "response_format")
        if not tools and response_format.get("type") == "json_schema":
            # Structured output through a JSON schema: decide as with the schema as a tool.
            spec = response_format.get("json_schema") or {}
            name = str(spec.get("name") or "")
            tools = [{"type": "function", "function": {"name": name, **_schema_of(spec)}}]
            tool_choice, content_only = name, True
        names = {t.get("function", {}).get("name") for t in tools if isinstance(t, dict)}
        if isinstance(tool_choice, dict):
            tool_choice = (tool_choice.get("function") or {}).get("name")
            if tool_choice not in names:
                raise RequestInvalid(f"tool_choice names {tool_choice!r}, which is not a tool")
        model = self.model
        if tools and tool_choice != "none":
            answer = model.bind_tools(tools, tool_choice=tool_choice).invoke(messages)
        else:
            answer = model.invoke(messages)
        if not isinstance(answer, AIMessage):
            raise RequestInvalid(f"the model answered with a {type(answer).__name__}")
        name = str(request.get("model") or OFFLINE_MODEL_ID)
        return Reply(body=completion(answer, name, content_only=content_only))


def _schema_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {"parameters": spec.get("schema") or {}}
    if spec.get("description"):
        found["description"] = spec["description"]
    return found


class RecordedReply(BaseModel):
    """One recorded reply, sent for the next matching request(s)."""

    role: Literal["planner", "validator", "executor", "chat", "any"] = "any"
    """Which agent's requests it answers (told apart by the tools they bind)."""
    repeat: int = Field(default=1, ge=1)
    """How many matching requests in a row get it."""
    offline: bool = False
    """Let the offline model answer (keeps this reply's place in the order)."""
    status: int = 200
    """HTTP status."""
    body: dict[str, Any] | None = None
    """JSON body, sent as recorded."""
    raw: str | None = None
    """A body sent verbatim instead (text that is not JSON)."""
    headers: dict[str, str] = {}
    """Extra response headers."""
    delay_s: float = Field(default=0.0, ge=0)
    """Seconds to wait before answering."""
    note: str = ""
    """What this reply exercises."""


class Recording(BaseModel):
    """A recorded-responses file: replies in order, then the offline model."""

    description: str = ""
    """What the recording exercises."""
    replies: list[RecordedReply]
    """The replies, in the order they are used."""

    @classmethod
    def load(cls, path: Path) -> Recording:
        """Read a recording, naming the file and field that are wrong."""
        try:
            return cls.model_validate_json(path.read_text())
        except OSError as exc:
            raise RecordingInvalid(f"{path}: cannot read: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise RecordingInvalid(f"{path}: {problems}") from None


@dataclass
class Exchange:
    """One request the replay backend saw and how it answered."""

    role: Role
    request: dict[str, Any]
    reply: Reply
    recorded: int | None
    """Index of the recorded reply used (None: the offline model answered)."""


class ReplayBackend:
    """Answers from a recording first, then with the offline model; keeps every exchange."""

    def __init__(self, recording: Recording, fallback: Backend | None = None) -> None:
        self.recording = recording
        self.fallback = fallback or OfflineBackend()
        self.exchanges: list[Exchange] = []
        self._left = [r.repeat for r in recording.replies]
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> ReplayBackend:
        """Replay the recording in ``path``."""
        return cls(Recording.load(path))

    def _take(self, role: Role) -> int | None:
        with self._lock:
            for index, recorded in enumerate(self.recording.replies):
                if self._left[index] and recorded.role in (role, "any"):
                    self._left[index] -= 1
                    return index
        return None

    def reply(self, request: Mapping[str, Any]) -> Reply:
        """The next recorded reply for this request's role, or the offline model's answer."""
        role = request_role(request)
        index = self._take(role)
        recorded = self.recording.replies[index] if index is not None else None
        if recorded is None or recorded.offline:
            reply = self.fallback.reply(request)
        else:
            reply = Reply(
                status=recorded.status,
                body=recorded.body,
                raw=recorded.raw,
                headers=dict(recorded.headers),
                delay_s=recorded.delay_s,
            )
        with self._lock:
            self.exchanges.append(Exchange(role, dict(request), reply, index))
        return reply

    def requests(self, role: Role) -> list[dict[str, Any]]:
        """The requests ``role`` sent, in order."""
        return [e.request for e in self.exchanges if e.role == role]

    def usage(self, role: Role) -> dict[str, int]:
        """Tokens the successful replies to ``role`` reported."""
        total = {"prompt_tokens": 0, "completion_tokens": 0}
        for exchange in self.exchanges:
            body = exchange.reply.body or {}
            if exchange.role == role and exchange.reply.status == 200 and body.get("usage"):
                for key in total:
                    total[key] += int(body["usage"].get(key) or 0)
        return total

    def unused(self) -> list[int]:
        """Indexes of recorded replies not (fully) used yet."""
        with self._lock:
            return [i for i, left in enumerate(self._left) if left]


# --------------------------------------------------------------------------- HTTP


class ModelHTTPServer(ThreadingHTTPServer):
    """The HTTP server: a backend, an optional bearer token, and a stop signal for hangs."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], backend: Backend, api_key: str | None = None
    ) -> None:
        super().__init__(address, _Handler)
        self.backend = backend
        self.api_key = api_key
        self.stopping = threading.Event()

    @property
    def base_url(self) -> str:
        """The URL clients use as ``OPENAI_BASE_URL``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ModelHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "fieldgate-model/1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK add some 40 ms to every answer.
    disable_nagle_algorithm = True
    timeout = 60.0
    """Idle keep-alive connections are closed after this many seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send_json(
            HTTPStatus.UNAUTHORIZED,
            error_body("invalid API key", "invalid_request_error"),
        )
        return False

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/health", "/v1/health"):
            self._send_json(HTTPStatus.OK, {"status": "ok"})
            return
        if not self._authorized():
            return
        entry = {"id": OFFLINE_MODEL_ID, "object": "model", "created": 0, "owned_by": "fieldgate"}
        if path in ("/v1/models", "/models"):
            self._send_json(HTTPStatus.OK, {"object": "list", "data": [entry]})
        elif path.startswith(("/v1/models/", "/models/")):
            self._send_json(HTTPStatus.OK, {**entry, "id": path.rsplit("/", 1)[1]})
        else:
            self._not_found()

    def _not_found(self) -> None:
        self._send_json(
            HTTPStatus.NOT_FOUND, error_body(f"no route {self.path}", "invalid_request_error")
        )

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._not_found()
            return
        if not self._authorized():
            return
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise RequestInvalid("the body must be a JSON object")
            reply = self.server.backend.reply(request)
        except (ValueError, RequestInvalid) as exc:
            param = exc.param if isinstance(exc, RequestInvalid) else None
            self._send_json(
                HTTPStatus.BAD_REQUEST, error_body(str(exc), "invalid_request_error", param)
            )
            return
        except Exception as exc:
            # Whatever went wrong, the client gets an answer it can retry, not a dropped line.
            log.exception("the model backend failed")
            message = f"the model backend failed: {type(exc).__name__}: {exc}"
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, error_body(message, "server_error"))
            return
        if reply.delay_s and self.server.stopping.wait(reply.delay_s):
            return
        try:
            self._answer(request, reply)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout passed while a recorded hang waited).
            self.close_connection = True

    def _answer(self, request: Mapping[str, Any], reply: Reply) -> None:
        if reply.raw is not None:
            self._send(reply.status, reply.raw.encode(), "application/json", reply.headers)
        elif reply.status == 200 and request.get("stream") and reply.body is not None:
            options = request.get("stream_options") or {}
            self._stream(stream_chunks(reply.body, bool(options.get("include_usage"))))
        else:
            self._send_json(reply.status, reply.body or {}, reply.headers)

    def _stream(self, chunks: Iterator[dict[str, Any]]) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = (f"data: {json.dumps(c)}\n\n" for c in chunks)
        for event in itertools.chain(events, ["data: [DONE]\n\n"]):
            data = event.encode()
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


@contextmanager
def model_server(
    backend: Backend | None = None,
    *,
    host: str = LOOPBACK,
    port: int = 0,
    api_key: str | None = None,
) -> Iterator[str]:
    """Serve ``backend`` (the offline model by default) in a background thread.

    Yields the base URL (``http://127.0.0.1:PORT/v1``); port 0 picks a free port.
    """
    server = ModelHTTPServer((host, port), backend or OfflineBackend(), api_key)
    # A short poll keeps shutdown quick: tests start and stop many servers.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="model-server", daemon=True
    )
    thread.start()
    try:
        yield server.base_url
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


def serve_forever(
    backend: Backend | None = None,
    *,
    host: str = LOOPBACK,
    port: int = 0,
    api_key: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in this thread until interrupted; ``on_ready`` gets the base URL first."""
    server = ModelHTTPServer((host, port), backend or OfflineBackend(), api_key)
    try:
        if on_ready is not None:
            on_ready(server.base_url)
        server.serve_forever()
    finally:
        server.stopping.set()
        server.server_close()

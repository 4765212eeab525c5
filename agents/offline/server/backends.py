"""What answers the server's requests: the offline model, or a recording replayed first.

The replay backend answers from a recording first (``tests/recorded/*.json``): malformed
output, error statuses and hangs, in order, each meant for the planner, the validator,
the executor or any caller; when no recorded reply is left for a request, the offline
model answers it. That lets tests drive the real ``openai`` client path through
retries, timeouts and output validation without a network.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from pydantic import BaseModel, Field, ValidationError

from fieldgate.agents.offline.model import OfflineChatModel
from fieldgate.agents.offline.server.wire import (
    OFFLINE_MODEL_ID,
    Role,
    completion,
    request_role,
    to_langchain,
)
from fieldgate.contract import validation_problems
from fieldgate.errors import RecordingInvalid, RequestInvalid


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
            raise RecordingInvalid(f"{path}: {validation_problems(exc)}") from None


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

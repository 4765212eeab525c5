"""The OpenAI chat-completions wire format: requests into langchain messages, answers back.

Requests carry messages (system, user, assistant with ``tool_calls``, tool with
``tool_call_id``), ``tools``, ``tool_choice`` and ``response_format``; answers carry
``tool_calls`` with JSON-string arguments, ``finish_reason`` and ``usage``, whole or as the
``chat.completion.chunk`` events of a stream.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)

from fieldgate.batches import chunks
from fieldgate.errors import RequestInvalid

OFFLINE_MODEL_ID = "offline"
"""The model id ``GET /v1/models`` lists (any requested name is answered)."""

Role = Literal["planner", "validator", "executor", "chat"]
"""Which agent a request comes from, told apart by the tools it binds."""


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
    for text in chunks(content, 64):
        yield chunk({"content": text})
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
        for part in chunks(arguments, 256):
            piece = {"arguments": part}
            yield chunk({"tool_calls": [{"index": index, "function": piece}]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if include_usage:
        yield {**base, "choices": [], "usage": body.get("usage")}

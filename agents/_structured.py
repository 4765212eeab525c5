"""Structured output from any chat model, with invalid answers fed back and counted.

Model calls fail in two ways, both :class:`ModelFailed`: the endpoint never answers
(timeouts, dropped connections, rate limits and server errors past the client's own
retries with backoff: :class:`ModelCallFailed`), or it keeps answering with output
that does not follow the schema (:class:`ModelOutputInvalid`). Either carries the
tokens spent and the errors fed back on the way, so a failed node still accounts
for them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import openai
from langchain_core.exceptions import ModelError
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ValidationError

from fieldgate.contract import validation_problems
from fieldgate.errors import ModelCallFailed, ModelOutputInvalid, rejected_answers
from fieldgate.usage import Usage

S = TypeVar("S", bound=BaseModel)


@dataclass
class StructuredCall(Generic[S]):
    """What a structured call produced: the value, usage, and the errors fed back on the way."""

    value: S
    usage: Usage
    errors: list[str] = field(default_factory=list)
    prompt_chars: int = 0
    outputs: list[str] = field(default_factory=list)
    """The refused answers as the model wrote them (one per error)."""

    def rejected(self) -> list[dict[str, str]]:
        """Each refused answer with its error, for the audit log."""
        return rejected_answers(self.errors, self.outputs)


MAX_OUTPUT_CHARS = 4000
"""Longest refused answer kept for the audit log."""


def raw_output(message: AIMessage) -> str:
    """What the model wrote: tool calls with their arguments as sent, else its text."""
    calls = [
        f"{c['name']}({json.dumps(c['args'], sort_keys=True)})" for c in message.tool_calls
    ] + [f"{c.get('name')}({c.get('args')})" for c in message.invalid_tool_calls]
    text = "; ".join(calls) or str(message.content)
    return text[:MAX_OUTPUT_CHARS]


def _limits(model: BaseChatModel) -> str:
    # ChatOpenAI names its own limits; the offline model has none.
    timeout = getattr(model, "request_timeout", None)
    retries = getattr(model, "max_retries", None)
    parts = []
    if isinstance(timeout, int | float):
        parts.append(f"timeout {timeout:g} s")
    if isinstance(retries, int):
        parts.append(f"{retries + 1} attempts")
    return f" ({', '.join(parts)})" if parts else ""


def invoke_model(
    model: BaseChatModel,
    bound: Runnable[LanguageModelInput, Any],
    messages: list[BaseMessage],
    what: str,
    usage: Usage | None = None,
    errors: Sequence[str] = (),
    outputs: Sequence[str] = (),
) -> AIMessage:
    """Call ``bound`` (``model`` with tools bound); raise :class:`ModelCallFailed` on no answer."""
    try:
        answer = bound.invoke(messages)
    # langchain-openai classifies the openai client's errors as ModelError; a body that is
    # not JSON at all (a proxy's error page) surfaces as the decoder's error.
    except (ModelError, openai.APIError, json.JSONDecodeError) as exc:
        raise ModelCallFailed(
            f"{what}: no usable answer from the model{_limits(model)}: {type(exc).__name__}: {exc}",
            usage,
            errors,
            outputs,
        ) from exc
    if not isinstance(answer, AIMessage):
        raise ModelOutputInvalid(f"{what}: the model returned {type(answer).__name__}", usage)
    return answer


def _tool_args(message: AIMessage, name: str) -> tuple[dict[str, Any] | None, str | None]:
    calls = [c for c in message.tool_calls if c["name"] == name]
    if not calls:
        if message.invalid_tool_calls:
            return None, f"the {name} call is not valid JSON ({json_problem(message)})"
        others = sorted({str(c["name"]) for c in message.tool_calls})
        if others:
            return None, f"{', '.join(others)} is not a tool here; call {name}"
        return None, f"answer with exactly one {name} tool call (got none)"
    return calls[0]["args"], None


def json_problem(message: AIMessage) -> str:
    """Why the first invalid tool call's arguments are not JSON, in the decoder's words."""
    bad = message.invalid_tool_calls[0]
    try:
        json.loads(bad.get("args") or "")
    except json.JSONDecodeError as exc:
        return str(exc)
    except TypeError:
        pass
    return str(bad.get("error") or "unreadable arguments").splitlines()[0]


def _feedback(answer: AIMessage, name: str, problem: str) -> list[BaseMessage]:
    """The refused answer and the error, as a conversation an OpenAI endpoint accepts."""
    text = f"Your answer was refused: {problem}. Answer again with one {name} call."
    ids = [c.get("id") for c in (*answer.tool_calls, *answer.invalid_tool_calls)]
    if ids and all(ids):
        # Every tool call of an assistant message must be answered by a tool message.
        replies = [
            ToolMessage(text if i == 0 else f"Ignored: call {name} only.", tool_call_id=str(c))
            for i, c in enumerate(ids)
        ]
        return [answer, *replies]
    said = answer.content if isinstance(answer.content, str) else str(answer.content)
    return [AIMessage(content=said or "(no answer)"), HumanMessage(text)]


@functools.cache
def tool_spec(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAI tool spec of ``schema``, built once: JSON Schema generation is not cheap."""
    return convert_to_openai_tool(schema)


def call_structured(
    model: BaseChatModel, messages: list[BaseMessage], schema: type[S], retries: int = 2
) -> StructuredCall[S]:
    """Call ``model`` with ``schema`` bound as its one tool and validate the answer.

    A malformed answer (arguments that are not JSON, a schema violation, another tool or
    no call) is sent back to the model with the error, at most ``retries`` times; then
    :class:`ModelOutputInvalid` names the last error. An endpoint that does not answer
    raises :class:`ModelCallFailed` (the client already retried it with backoff).
    """
    name = schema.__name__
    bound = model.bind_tools([tool_spec(schema)], tool_choice=name)
    usage = Usage()
    errors: list[str] = []
    outputs: list[str] = []
    conversation = list(messages)
    prompt_chars = sum(len(str(m.content)) for m in messages)
    for _ in range(retries + 1):
        answer = invoke_model(model, bound, conversation, name, usage, errors, outputs)
        usage.add(answer)
        args, problem = _tool_args(answer, name)
        if args is not None:
            try:
                value = schema.model_validate(args)
                return StructuredCall(value, usage, errors, prompt_chars, outputs)
            except ValidationError as exc:
                problem = f"the {name} call does not follow its schema: {validation_problems(exc)}"
        problem = problem or "unknown problem"
        errors.append(problem)
        outputs.append(raw_output(answer))
        conversation += _feedback(answer, name, problem)
    raise ModelOutputInvalid(
        f"{name}: no valid answer after {retries + 1} attempts; last error: {errors[-1]}",
        usage,
        errors,
        outputs,
    )

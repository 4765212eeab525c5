"""Structured output from any chat model, with invalid answers fed back and counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, ValidationError

from fieldgate.errors import FieldgateError

S = TypeVar("S", bound=BaseModel)


class ModelOutputInvalid(FieldgateError):
    """The model kept answering with output that does not follow the schema."""


@dataclass
class Usage:
    """Tokens a node spent."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0

    def add(self, message: AIMessage) -> None:
        """Count the usage a model response reports."""
        meta = message.usage_metadata
        if meta is not None:
            self.input_tokens += meta["input_tokens"]
            self.output_tokens += meta["output_tokens"]
        self.calls += 1

    def as_dict(self) -> dict[str, int]:
        """The counts as a dict."""
        return {"input": self.input_tokens, "output": self.output_tokens, "calls": self.calls}


@dataclass
class StructuredCall(Generic[S]):
    """What a structured call produced: the value, usage, and the errors fed back on the way."""

    value: S
    usage: Usage
    errors: list[str] = field(default_factory=list)
    prompt_chars: int = 0


def _tool_args(message: AIMessage, name: str) -> tuple[dict[str, Any] | None, str | None]:
    calls = [c for c in message.tool_calls if c["name"] == name]
    if not calls:
        if message.invalid_tool_calls:
            bad = message.invalid_tool_calls[0]
            return None, f"the {name} call is not valid JSON: {bad.get('error') or bad.get('args')}"
        return None, f"answer with exactly one {name} tool call (got none)"
    return calls[0]["args"], None


def call_structured(
    model: BaseChatModel, messages: list[BaseMessage], schema: type[S], retries: int = 2
) -> StructuredCall[S]:
    """Call ``model`` with ``schema`` bound as its one tool and validate the answer.

    A malformed answer is sent back to the model with the error, at most ``retries``
    times; then :class:`ModelOutputInvalid` names the last error.
    """
    name = schema.__name__
    bound = model.bind_tools([schema], tool_choice=name)
    usage = Usage()
    errors: list[str] = []
    conversation = list(messages)
    prompt_chars = sum(len(str(m.content)) for m in messages)
    for _ in range(retries + 1):
        answer = bound.invoke(conversation)
        if not isinstance(answer, AIMessage):
            raise ModelOutputInvalid(f"{name}: the model returned {type(answer).__name__}")
        usage.add(answer)
        args, problem = _tool_args(answer, name)
        if args is not None:
            try:
                return StructuredCall(schema.model_validate(args), usage, errors, prompt_chars)
            except ValidationError as exc:
                problem = f"the {name} call does not follow its schema: {exc}"
        errors.append(problem or "unknown problem")
        conversation.append(answer)
        call_id = answer.tool_calls[0]["id"] if answer.tool_calls else None
        feedback = f"Your answer was refused: {problem}. Answer again with one {name} call."
        if call_id:
            conversation.append(ToolMessage(feedback, tool_call_id=call_id))
        else:
            conversation.append(HumanMessage(feedback))
    raise ModelOutputInvalid(
        f"{name}: no valid answer after {retries + 1} attempts; last error: {errors[-1]}"
    )

"""The offline model, recording what it is sent: for tests and benchmarks that count prompts.

:class:`RecordingModel` answers like :class:`~fieldgate.agents.offline.OfflineChatModel` and
keeps every call's messages; its executor answers can be scripted (a tool call, or an answer
without one) or preceded by a callback, to stage a model that goes off plan or goes away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from fieldgate.agents.offline.model import OfflineChatModel

ScriptedCall = tuple[str, dict[str, Any]] | None
"""One scripted executor answer: a tool call, or None for an answer without a tool call."""


def prompt_text(messages: Sequence[BaseMessage]) -> str:
    """Everything a model was sent in one call, as text."""
    return "\n".join(m.content if isinstance(m.content, str) else repr(m.content) for m in messages)


class RecordingModel(OfflineChatModel):
    """The offline model, recording every call; executor answers can be scripted or delayed."""

    sent: list[list[BaseMessage]] = Field(default_factory=list)
    """The messages of every call, in order."""
    script: list[ScriptedCall] = Field(default_factory=list)
    """Executor answers given before the offline executor takes over, in order."""
    before_executor: Callable[[list[BaseMessage]], None] | None = None
    """Called with the messages of every executor call before it is answered."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.sent.append(list(messages))
        names = {t["function"]["name"] for t in kwargs.get("tools") or [] if "function" in t}
        if "deploy_wave" in names:
            if self.before_executor is not None:
                self.before_executor(messages)
            if self.script:
                return _scripted(self.script.pop(0), len(self.sent))
        return super()._generate(messages, stop, run_manager, **kwargs)

    def characters(self) -> int:
        """Characters sent to the model so far."""
        return sum(len(prompt_text(m)) for m in self.sent)

    def prompts(self) -> list[str]:
        """Every call's messages as text."""
        return [prompt_text(m) for m in self.sent]


def _scripted(call: ScriptedCall, number: int) -> ChatResult:
    if call is None:
        message = AIMessage(content="Done.")
    else:
        name, args = call
        message = AIMessage(
            content="",
            tool_calls=[
                {"name": name, "args": args, "id": f"scripted-{number}", "type": "tool_call"}
            ],
        )
    return ChatResult(generations=[ChatGeneration(message=message)])

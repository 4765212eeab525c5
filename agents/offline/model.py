"""The offline model: a deterministic chat model for the planner, validator and executor prompts.

It is a real langchain-core ``BaseChatModel``: nodes call it exactly as they call any
OpenAI-compatible model, with tools bound and structured output requested. It reads
the tagged sections of the prompt (never the untrusted ones), decides with the
deterministic planner, reviewer and executor rules, and answers with a tool call.
Token usage is estimated from characters (about four a token).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from fieldgate.agents._prompting import first_section, read_sections
from fieldgate.agents._summary import PlanningContext
from fieldgate.agents.offline.followup import revise
from fieldgate.agents.offline.intent import Clarification
from fieldgate.agents.offline.planning import propose_plan
from fieldgate.agents.offline.resolving import understand
from fieldgate.contract import canonical_json, sha256_hex
from fieldgate.errors import PlanningError
from fieldgate.tools import Role, tools_with_role

_CHARS_PER_TOKEN = 4


def _tokens(text: str) -> int:
    return max(1, len(text) // _CHARS_PER_TOKEN)


def _text(messages: Sequence[BaseMessage]) -> str:
    return "\n".join(
        m.content if isinstance(m.content, str) else json.dumps(m.content) for m in messages
    )


def _human_text(messages: Sequence[BaseMessage]) -> str:
    """The first human message with tagged sections: the task as the node framed it
    (earlier turns of a conversation come before it, feedback after it)."""
    humans = [m.content for m in messages if m.type == "human" and isinstance(m.content, str)]
    framed = [text for text in humans if read_sections(text)]
    return framed[0] if framed else (humans[0] if humans else "")


def plan_decision(prompt: str) -> dict[str, Any]:
    """The planner's answer to a planner prompt: a plan draft or a question."""
    request = first_section(prompt, "request") or ""
    context_json = first_section(prompt, "planning_context")
    if context_json is None:
        return {
            "kind": "clarify",
            "question": "I was given no fleet summary to plan against.",
            "candidates": [],
        }
    context = PlanningContext.model_validate_json(context_json)
    revising = first_section(prompt, "plan_to_revise")
    understood = (
        revise(request, json.loads(revising), context) if revising else understand(request, context)
    )
    if isinstance(understood, Clarification):
        return {
            "kind": "clarify",
            "question": understood.question,
            "candidates": list(understood.candidates),
        }
    try:
        plan = propose_plan(understood, context, plan_id="draft", requested_by="draft")
    except PlanningError as exc:
        return {"kind": "clarify", "question": f"I cannot plan this: {exc}.", "candidates": []}
    draft = plan.model_dump(
        mode="json",
        include={
            "intent",
            "module",
            "version",
            "target",
            "waves",
            "abort",
            "rollback",
            "schedule",
            "rationale",
        },
    )
    return {"kind": "plan", "plan": draft, "candidates": []}


def review_decision(prompt: str) -> dict[str, Any]:
    """The validator's answer: accept when the deterministic findings are clean."""
    findings_json = first_section(prompt, "findings")
    findings = json.loads(findings_json) if findings_json else {}
    problems = list(findings.get("problems", []))
    dry_run = json.loads(first_section(prompt, "dry_run") or "{}")
    if problems:
        return {
            "verdict": "revise",
            "concerns": problems,
            "summary": f"{len(problems)} problem(s) must be fixed before policy review.",
        }
    waves = dry_run.get("waves", [])
    summary = (
        f"{dry_run.get('targets', '?')} targets in {len(waves)} waves; predicted duration "
        f"{dry_run.get('predicted_minutes', '?')} min; if the first wave fails, at most "
        f"{dry_run.get('blast_radius', '?')} devices are affected before the rollout halts."
    )
    return {"verdict": "accept", "concerns": list(findings.get("warnings", [])), "summary": summary}


def _offered(role: Role, tool_names: set[str]) -> str | None:
    """The first tool of ``role`` the model was offered, if any."""
    return next((name for name in sorted(tools_with_role(role)) if name in tool_names), None)


def executor_decision(prompt: str, tool_names: set[str]) -> tuple[str, dict[str, Any]] | None:
    """The executor's next tool call for the situation in the prompt, or None when done.

    Tools are chosen by their role in the registry (halt, rollback, deploy), among the
    tools the model was offered.
    """
    situation = json.loads(first_section(prompt, "situation") or "{}")
    if situation.get("kill_switch") and not situation.get("paused"):
        halt = _offered("halt", tool_names)
        return (halt, {"reason": "the kill switch is on"}) if halt else None
    abort = situation.get("abort") or {}
    if abort.get("tripped"):
        back = _offered("rollback", tool_names)
        if situation.get("rollback_automatic") and not situation.get("rolled_back") and back:
            return back, {"reason": abort.get("reason", "abort criteria tripped")}
        return None
    if situation.get("paused"):
        return None
    next_wave = situation.get("next_wave")
    deploy = _offered("deploy", tool_names)
    if next_wave is not None and deploy:
        return deploy, {"wave": int(next_wave)}
    return None


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model that answers fieldgate's agent prompts without a network."""

    model_name: str = "offline"
    """Name reported in usage and audit records."""

    @property
    def _llm_type(self) -> str:
        return "fieldgate-offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | BaseTool | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools the way OpenAI-compatible chat models do."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools = kwargs.get("tools") or []
        names = {t["function"]["name"] for t in tools if "function" in t}
        prompt = _human_text(messages)
        call: tuple[str, dict[str, Any]] | None
        content = ""
        if "PlannerDecision" in names:
            call = ("PlannerDecision", plan_decision(prompt))
        elif "ValidatorReview" in names:
            call = ("ValidatorReview", review_decision(prompt))
        elif names:
            call = executor_decision(_situation_prompt(messages), names)
            if call is None:
                content = "Nothing left to do for this plan."
        else:
            call = None
            content = _chat_answer(prompt)
        tool_calls = []
        if call is not None:
            name, args = call
            call_id = "call_" + sha256_hex(canonical_json([name, args, len(messages)]))[:24]
            tool_calls.append({"name": name, "args": args, "id": call_id, "type": "tool_call"})
        output = content + (json.dumps([c["args"] for c in tool_calls]) if tool_calls else "")
        usage = {
            "input_tokens": _tokens(_text(messages)),
            "output_tokens": _tokens(output),
            "total_tokens": _tokens(_text(messages)) + _tokens(output),
        }
        message = AIMessage(content=content, tool_calls=tool_calls, usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])


def _situation_prompt(messages: Sequence[BaseMessage]) -> str:
    """The newest message carrying a situation section (the executor re-sends it each step)."""
    for message in reversed(messages):
        if isinstance(message.content, str) and "<situation" in message.content:
            return message.content
    return ""


def _chat_answer(prompt: str) -> str:
    sections = read_sections(prompt)
    if "question" in sections:
        return "I can only answer from the plan, the policy decision and the audit trail shown."
    return (
        "I plan rollouts: ask me to roll out or roll back a module, "
        "e.g. 'roll out pump-logic 1.9.0 to rtm-05'."
    )

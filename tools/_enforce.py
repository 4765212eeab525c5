"""The enforcement point: every executor tool call is validated, authorized and audited here.

Nothing else runs a tool. A call is looked up in the registry, its arguments are
checked against the tool's model, the tools policy decides on the facts the tool
gives (what it would send to which devices), the decision is audited, and only an
allowed call runs. The model's mistakes come back as ``{"refused": reason}``,
never as exceptions.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fieldgate.audit import ActorKind, EventKind
from fieldgate.contract import validation_problems
from fieldgate.policy import tool_input
from fieldgate.tools._args import ToolArgs
from fieldgate.tools._execution import ToolContext
from fieldgate.tools._registry import TOOLS


def _arguments(schema: type[ToolArgs], args: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments, checked: valid JSON, and the tool's schema (no extra arguments)."""
    if "__invalid__" in args:
        raise ValueError(f"the arguments are not valid JSON: {args['__invalid__']}")
    try:
        return schema.model_validate(args).model_dump()
    except ValidationError as exc:
        raise ValueError(validation_problems(exc)) from None


def _refuse(tc: ToolContext, name: str, args: dict[str, Any], reason: str) -> None:
    tc.audit(
        EventKind.tool_call,
        ActorKind.agent,
        "executor",
        {"tool": name, "args": args, "allow": False, "reason": reason},
    )


def call_tool(
    tc: ToolContext, name: str, args: dict[str, Any], *, approved: bool, stop: str | None
) -> dict[str, Any]:
    """Validate, authorize, audit and run one tool call.

    Args:
        tc: The run the call belongs to.
        name: The tool the model called.
        args: Its arguments as the model gave them.
        approved: Whether the plan revision passed its approval gate.
        stop: The kill switch's reason when it is on (None when off).

    The change freeze is read as it stands now (the store's, or one the command forces).
    A call the policy engine could not decide comes back refused with ``engine_error``:
    the run holds until the engine works again, rather than counting it as the model's
    mistake.
    """
    tool = TOOLS.get(name)
    if tool is None:
        _refuse(tc, name, args, "unknown tool")
        return {"refused": f"unknown tool {name!r}; use one of {sorted(TOOLS)}"}
    try:
        parsed = _arguments(tool.args, args)
    except ValueError as exc:
        _refuse(tc, name, args, f"invalid arguments: {exc}")
        return {"refused": f"invalid arguments for {name}: {exc}"}
    checked, devices = tool.facts(tc, parsed)
    ex = tc.execution
    current = ex.current if ex.current < len(ex.waves) else None
    decision = tc.ctx.policy.tool(
        tool_input(
            name,
            {**checked, "devices": devices},
            plan=tc.plan,
            digest=tc.manifest.artifact.digest,
            approved=approved,
            plan_devices=[d for w in ex.waves for d in w.devices],
            wave_index=current,
            wave_devices=ex.waves[current].devices if current is not None else (),
            previous_gate_passed=current == 0
            or (current is not None and ex.waves[current - 1].status == "passed"),
            kill_switch=stop is not None,
            freeze=tc.ctx.freeze_in_force() is not None,
            rollback_plan=tc.rollback_plan,
        ),
        thread_id=tc.thread_id,
    )
    tc.audit(
        EventKind.tool_call,
        ActorKind.agent,
        "executor",
        {
            "tool": name,
            "args": checked,
            "devices": len(devices),
            "allow": decision.allow,
            "reason": decision.reason,
        },
    )
    if decision.error is not None:
        return {"refused": decision.reason, "engine_error": decision.error}
    if not decision.allow:
        return {"refused": decision.reason}
    result = tool.run(tc, parsed, stop)
    tc.audit(EventKind.tool_result, ActorKind.agent, "executor", {"tool": name, "result": result})
    if ex.abort.tripped and tool.role == "deploy":
        tc.audit(
            EventKind.abort,
            ActorKind.agent,
            "executor",
            {"reason": ex.abort.reason, "failures": ex.failures, "executed": ex.executed},
        )
    return result

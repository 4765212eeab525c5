"""The executor's tools, one :class:`Tool` record each, in one registry.

A record says everything fieldgate knows of a tool: the name the model calls, the
argument model (its docstring is the prompt), the role that the tools policy
judges it by, the facts it gives policy (which devices the call would reach) and
what runs once policy allowed it. The graph's enforcement point, the executor
model's tool list, the offline executor, the eval harness's safety detectors and
the tools policy's data (``policies/data.json``, held equal by a test) all read
this registry. Adding a tool is one record here plus its rule in
``policies/tools.rego``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fieldgate.audit import ActorKind, EventKind
from fieldgate.tools._args import (
    DeployWave,
    DeviceTelemetry,
    FleetStatus,
    Pause,
    Resume,
    Rollback,
    ToolArgs,
)
from fieldgate.tools._execution import (
    ToolContext,
    deploy_wave,
    device_telemetry,
    fleet_status,
    rollback,
)

Role = Literal["read", "halt", "resume", "deploy", "rollback"]
"""What a call does, as the tools policy judges it (``input.tool`` → ``kind``)."""

ROLES: tuple[Role, ...] = ("read", "halt", "resume", "deploy", "rollback")
"""Every role, in the order the tools policy's data lists them."""

CHANGING: frozenset[Role] = frozenset({"deploy", "rollback", "resume"})
"""Roles that change a device or let changes continue (refused while the kill switch is on)."""

Facts = Callable[[ToolContext, dict[str, Any]], tuple[dict[str, Any], list[str]]]
"""The call as policy checks it: the arguments with what it would send, and to which devices."""

Run = Callable[[ToolContext, dict[str, Any], str | None], dict[str, Any]]
"""Carry out an allowed call (arguments checked; the kill switch's reason, if it is on)."""


def _reads(tc: ToolContext, args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    return dict(args), []


def _deploy_facts(tc: ToolContext, args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    waves = tc.execution.waves
    wave = args["wave"]
    devices = waves[wave].devices if 0 <= wave < len(waves) else []
    plan = tc.plan
    return {
        **args,
        "plan_hash": tc.plan_hash,
        "module": plan.module,
        "version": plan.version,
        "digest": tc.manifest.artifact.digest,
    }, devices


def _rollback_facts(tc: ToolContext, args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    plan = tc.plan
    return {
        **args,
        "plan_hash": tc.plan_hash,
        "module": plan.module,
        "version": plan.rollback.version if plan.rollback else None,
    }, list(tc.execution.touched)


def _audit_stop(tc: ToolContext, payload: dict[str, Any]) -> None:
    tc.audit(EventKind.stop, ActorKind.system, "kill-switch", payload)


def _deploy(tc: ToolContext, args: dict[str, Any], stop: str | None) -> dict[str, Any]:
    # A wave held between two batches is audited where the run holds (the executor).
    return deploy_wave(tc, args["wave"])


def _rollback(tc: ToolContext, args: dict[str, Any], stop: str | None) -> dict[str, Any]:
    return rollback(tc, args["reason"])


def _pause(tc: ToolContext, args: dict[str, Any], stop: str | None) -> dict[str, Any]:
    tc.execution.paused = True
    if stop:
        _audit_stop(tc, {"reason": stop})
    return {"paused": True, "reason": args["reason"]}


def _resume(tc: ToolContext, args: dict[str, Any], stop: str | None) -> dict[str, Any]:
    tc.execution.paused = False
    return {"paused": False}


def _fleet_status(tc: ToolContext, args: dict[str, Any], stop: str | None) -> dict[str, Any]:
    return fleet_status(tc, args.get("wave"))


def _device_telemetry(tc: ToolContext, args: dict[str, Any], stop: str | None) -> dict[str, Any]:
    return device_telemetry(tc, args["device_id"])


@dataclass(frozen=True)
class Tool:
    """One executor tool."""

    name: str
    """What the model calls it."""
    args: type[ToolArgs]
    """Its arguments; the model's docstring is the tool's prompt."""
    role: Role
    """What the tools policy judges it as."""
    run: Run
    """What runs once policy allowed the call."""
    facts: Facts = _reads
    """What policy is told of the call (default: its arguments, no devices)."""

    @property
    def changes_devices(self) -> bool:
        """Whether the call changes a device or lets changes continue."""
        return self.role in CHANGING

    def spec(self) -> dict[str, Any]:
        """The tool in the OpenAI function-calling format, its docstring as description."""
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        description = " ".join((self.args.__doc__ or "").split())
        return {
            "type": "function",
            "function": {"name": self.name, "description": description, "parameters": schema},
        }


TOOLS: Mapping[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("deploy_wave", DeployWave, "deploy", _deploy, _deploy_facts),
        Tool("rollback", Rollback, "rollback", _rollback, _rollback_facts),
        Tool("pause", Pause, "halt", _pause),
        Tool("resume", Resume, "resume", _resume),
        Tool("fleet_status", FleetStatus, "read", _fleet_status),
        Tool("device_telemetry", DeviceTelemetry, "read", _device_telemetry),
    )
}
"""Every executor tool, by name, in the order the model is shown them."""


def tool_specs() -> list[dict[str, Any]]:
    """Every tool in the OpenAI function-calling format."""
    return [tool.spec() for tool in TOOLS.values()]


def tools_with_role(role: Role) -> frozenset[str]:
    """The names of the tools of one role."""
    return frozenset(name for name, tool in TOOLS.items() if tool.role == role)


def policy_tools() -> dict[str, list[str]]:
    """The tools policy's data (``data.fieldgate.config.tools``): tool names by role."""
    return {role: [n for n, t in TOOLS.items() if t.role == role] for role in ROLES}

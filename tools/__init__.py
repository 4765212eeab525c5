"""The tools the executor agent calls: fleet status, deploy a wave, pause, resume, roll back,
device telemetry. Each is one record in :data:`TOOLS`; every call passes :func:`call_tool`,
where policy checks it first."""

from fieldgate.tools._args import ToolArgs
from fieldgate.tools._enforce import call_tool
from fieldgate.tools._execution import (
    HOLD_LABELS,
    AbortState,
    Execution,
    GateResult,
    Hold,
    HoldKind,
    ToolContext,
    WaveRun,
    hold_for,
    settle,
    unknown_devices,
)
from fieldgate.tools._registry import (
    CHANGING,
    ROLES,
    TOOLS,
    Role,
    Tool,
    policy_tools,
    tool_specs,
    tools_with_role,
)

__all__ = [
    "CHANGING",
    "HOLD_LABELS",
    "ROLES",
    "TOOLS",
    "AbortState",
    "Execution",
    "GateResult",
    "Hold",
    "HoldKind",
    "Role",
    "Tool",
    "ToolArgs",
    "ToolContext",
    "WaveRun",
    "call_tool",
    "hold_for",
    "policy_tools",
    "settle",
    "tool_specs",
    "tools_with_role",
    "unknown_devices",
]

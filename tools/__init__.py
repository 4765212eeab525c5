"""The tools the executor agent calls: fleet status, deploy a wave, pause, resume, roll back,
device telemetry. A tool's docstring is its prompt; every call is checked by policy first."""

from fieldgate.tools._execution import (
    AbortState,
    Execution,
    GateResult,
    ToolContext,
    WaveRun,
    deploy_wave,
    device_telemetry,
    fleet_status,
    ingest,
    judge_gate,
    make_command,
    rollback,
)
from fieldgate.tools._specs import CHANGES_DEVICES, TOOL_ARGS, tool_specs

__all__ = [
    "CHANGES_DEVICES",
    "TOOL_ARGS",
    "AbortState",
    "Execution",
    "GateResult",
    "ToolContext",
    "WaveRun",
    "deploy_wave",
    "device_telemetry",
    "fleet_status",
    "ingest",
    "judge_gate",
    "make_command",
    "rollback",
    "tool_specs",
]

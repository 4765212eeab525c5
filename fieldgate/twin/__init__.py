"""Fleet twin: simulated sites and devices on a virtual clock, kept in the store.

The twin is the default edge transport: it takes device commands, runs them on
simulated devices in simulated time, injects faults, and answers with device
reports. Its state, clock and effect ledger live in the store, so a restarted
worker continues the same simulated fleet. See ``_simulation`` for how it simulates.
"""

from fieldgate.twin._draws import DURATION_SECONDS, SLOW_FACTOR
from fieldgate.twin._models import (
    DeviceState,
    DispatchOutcome,
    DispatchResult,
    DuplicateCommand,
    Effect,
    EffectPhase,
    PendingCommand,
)
from fieldgate.twin._tables import (
    TWIN_TABLES,
    TwinDeviceRow,
    TwinEffectRow,
    TwinFaultRow,
    TwinFleetRow,
    init_twin_store,
)
from fieldgate.twin._twin import FleetTwin

__all__ = [
    "DURATION_SECONDS",
    "SLOW_FACTOR",
    "TWIN_TABLES",
    "DeviceState",
    "DispatchOutcome",
    "DispatchResult",
    "DuplicateCommand",
    "Effect",
    "EffectPhase",
    "FleetTwin",
    "PendingCommand",
    "TwinDeviceRow",
    "TwinEffectRow",
    "TwinFaultRow",
    "TwinFleetRow",
    "init_twin_store",
]

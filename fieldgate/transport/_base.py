"""The transport interface the executor talks to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from fieldgate.commands import DeviceCommand, DeviceReport


@dataclass(frozen=True)
class Dispatched:
    """What a dispatch did with each command id."""

    accepted: list[str] = field(default_factory=list)
    """Delivered to a reachable device (a report will follow)."""
    queued: list[str] = field(default_factory=list)
    """Held for an unreachable device; delivered when it returns."""
    duplicates: dict[str, DeviceReport | None] = field(default_factory=dict)
    """Ids sent before: nothing new happens; the stored report when there is one."""
    unknown: list[str] = field(default_factory=list)
    """Addressed to a device the transport does not know: nothing happens."""


class Transport(Protocol):
    """Delivers device commands and brings back device reports."""

    @property
    def name(self) -> str:
        """``twin`` or ``mqtt``."""

    @property
    def records_installed(self) -> bool:
        """Whether the transport itself records reported module versions in the fleet store.

        The MQTT gateway does, in each device's clock order, so that a late report never
        overwrites newer state; the executor then leaves installed versions alone.
        """

    def now(self) -> datetime:
        """The transport's clock (virtual for the twin, wall clock otherwise)."""

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        """Hand ``commands`` of wave ``wave`` (from 0) to their devices."""

    def wait(self, pending: set[str], until: datetime) -> list[DeviceReport]:
        """Collect reports until every id in ``pending`` has one or ``until`` passes."""

    def sleep_until(self, until: datetime) -> list[DeviceReport]:
        """Let time pass until ``until``; return the reports that arrived meanwhile."""

    def sent(self, command_ids: set[str]) -> dict[str, DeviceReport | None]:
        """Which of ``command_ids`` were ever sent, each with its stored first answer (None:
        none yet), whenever it came: also while no executor step was listening."""

    def telemetry(self, device_id: str) -> dict[str, Any]:
        """The latest status a device reported: installed modules, health, reachability."""

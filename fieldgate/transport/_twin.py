"""The fleet twin as a transport: commands run on simulated devices in virtual time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fieldgate.commands import DeviceCommand, DeviceReport
from fieldgate.transport._base import Dispatched
from fieldgate.twin import FleetTwin


class TwinTransport:
    """Delivers commands to a :class:`FleetTwin`; waiting advances its virtual clock."""

    def __init__(self, twin: FleetTwin) -> None:
        self.twin = twin

    @property
    def name(self) -> str:
        """``twin``."""
        return "twin"

    @property
    def records_installed(self) -> bool:
        """False: the executor records what the twin's devices report."""
        return False

    def now(self) -> datetime:
        """The twin's virtual clock."""
        return self.twin.now

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        """Hand commands to the simulated devices."""
        result = self.twin.dispatch(commands, wave)
        return Dispatched(
            accepted=list(result.accepted),
            queued=list(result.queued),
            duplicates={d.command_id: d.report for d in result.duplicates},
            unknown=list(result.unknown_device),
        )

    def wait(self, pending: set[str], until: datetime) -> list[DeviceReport]:
        """Advance event by event until every pending id reported or ``until`` is reached."""
        waiting = set(pending)
        reports: list[DeviceReport] = []
        while waiting:
            upcoming = self.twin.next_event()
            if upcoming is None or upcoming > until:
                if until > self.twin.now:
                    reports.extend(self.twin.advance(until))
                break
            arrived = self.twin.advance(upcoming)
            reports.extend(arrived)
            waiting -= {r.command_id for r in arrived}
        return reports

    def sleep_until(self, until: datetime) -> list[DeviceReport]:
        """Advance the virtual clock to ``until``."""
        if until <= self.twin.now:
            return []
        return self.twin.advance(until)

    def sent(self, command_ids: set[str]) -> dict[str, DeviceReport | None]:
        """Which of ``command_ids`` the twin's effect ledger holds, with their reports."""
        return {e.command_id: e.report for e in self.twin.effects() if e.command_id in command_ids}

    def telemetry(self, device_id: str) -> dict[str, Any]:
        """The simulated device's status, with its free-text note (untrusted)."""
        return self.twin.telemetry(device_id)

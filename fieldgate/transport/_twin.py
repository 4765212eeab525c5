"""The fleet twin as a transport: commands run on simulated devices in virtual time.

Every report the twin's devices send passes :func:`fieldgate.devices.refusal_of`, the
check the gateway runs over MQTT, against the keys enrolled in the fleet store, before
it reaches the executor: a refused report is counted in :attr:`TwinTransport.refused`,
kept in :attr:`TwinTransport.rejections` and never handed on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from fieldgate.commands import DeviceCommand, DeviceReport
from fieldgate.devices import MAX_CLOCK_SKEW_S, Known, Refused, refusal_of
from fieldgate.edge import REFUSED_PREFIX
from fieldgate.epoch import to_ms
from fieldgate.store import FleetStore
from fieldgate.transport._base import Dispatched
from fieldgate.twin import FleetTwin


class TwinTransport:
    """Delivers commands to a :class:`FleetTwin`; waiting advances its virtual clock."""

    def __init__(
        self,
        twin: FleetTwin,
        *,
        keys: Callable[[Iterable[str]], dict[str, str]] | None = None,
        max_clock_skew: float = MAX_CLOCK_SKEW_S,
    ) -> None:
        """Wrap ``twin``.

        Args:
            twin: The simulated fleet.
            keys: Enrolled public keys by device id, for the devices asked about
                (default: the fleet store on the twin's database).
            max_clock_skew: Seconds a report's clock may run ahead of the twin's.
        """
        self.twin = twin
        self.keys = keys or FleetStore(twin.engine).device_keys
        self.max_clock_skew = max_clock_skew
        self.refused: dict[str, int] = {}
        """Reports refused, by kind."""
        self.rejections: list[tuple[DeviceReport, Refused]] = []
        """Every refused report and why."""
        self._enrolled: dict[str, str] = {}
        self._read_all = False
        self._newest: dict[str, tuple[int, int]] = {}
        self._answers: dict[str, str | None] = {}

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
        # The keys of the devices about to answer, in one query (not one per event).
        self._enroll_keys(c.device_id for c in commands)
        stored = [d.report for d in result.duplicates if d.report is not None]
        trusted = {r.command_id for r in self._trusted(stored)}
        return Dispatched(
            accepted=list(result.accepted),
            queued=list(result.queued),
            duplicates={
                d.command_id: d.report if d.command_id in trusted else None
                for d in result.duplicates
            },
            unknown=list(result.unknown_device),
        )

    def wait(self, pending: set[str], until: datetime) -> list[DeviceReport]:
        """Advance event by event until every pending id reported or ``until`` is reached."""
        waiting = set(pending)
        reports: list[DeviceReport] = []
        if not waiting:
            return reports

        def more(arrived: list[DeviceReport]) -> bool:
            trusted = self._trusted(arrived)
            reports.extend(trusted)
            waiting.difference_update(r.command_id for r in trusted)
            return bool(waiting)

        # Every event's reports are checked as they arrive; the twin writes through once.
        self.twin.advance_while(until, more)
        return reports

    def sleep_until(self, until: datetime) -> list[DeviceReport]:
        """Advance the virtual clock to ``until``."""
        if until <= self.twin.now:
            return []
        return self._trusted(self.twin.advance(until))

    def sent(self, command_ids: set[str]) -> dict[str, DeviceReport | None]:
        """Which of ``command_ids`` the twin's effect ledger holds, with their reports."""
        return {e.command_id: e.report for e in self.twin.effects() if e.command_id in command_ids}

    def telemetry(self, device_id: str) -> dict[str, Any]:
        """The simulated device's status, with its free-text note (untrusted)."""
        return self.twin.telemetry(device_id)

    def _enroll_keys(self, device_ids: Iterable[str]) -> None:
        """Know the enrolled keys of ``device_ids``: the first time any is missing, every
        simulated device's, in one read (a large wave asks in batches of a few devices)."""
        missing = {d for d in device_ids if d not in self._enrolled}
        if not missing:
            return
        if not self._read_all:
            self._read_all = True
            missing.update(self.twin.device_ids())
        self._enrolled.update(self.keys(missing))

    def _trusted(self, reports: list[DeviceReport]) -> list[DeviceReport]:
        """The reports :func:`refusal_of` lets through, in order; the others are kept aside."""
        self._enroll_keys(r.device_id for r in reports)
        now_ms, skew_ms = to_ms(self.twin.now), round(self.max_clock_skew * 1000)
        kept = []
        for report in reports:
            answers = not report.command_id.startswith(REFUSED_PREFIX)
            known = Known(
                self._enrolled.get(report.device_id),
                self._newest.get(report.device_id, (-1, -1)),
                self.twin.addressee(report.command_id) if answers else None,
                report.command_id in self._answers,
                self._answers.get(report.command_id),
            )
            refused = refusal_of(report, known, now_ms, skew_ms)
            if refused is not None:
                self.refused[refused.kind.value] = self.refused.get(refused.kind.value, 0) + 1
                self.rejections.append((report, refused))
                continue
            kept.append(report)
            reading = (report.hlc.wall_ms, report.hlc.counter)
            self._newest[report.device_id] = max(
                self._newest.get(report.device_id, reading), reading
            )
            self._answers.setdefault(report.command_id, report.signature)
        return kept

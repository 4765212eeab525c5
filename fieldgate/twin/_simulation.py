"""The twin's simulation: devices running commands and suffering faults on a virtual clock.

How the simulation reads:

- **Clock.** Virtual, in whole milliseconds (UTC). It moves only through
  :meth:`FleetTwin.advance` and :meth:`FleetTwin.settle`.
- **Devices run one command at a time**, in dispatch order. A command starts when
  its device is reachable and idle, runs for a duration drawn from the seed and the
  command id (install 2-6 min, rollback 1-3 min, validate 10-30 s; five times as
  long when a ``slow`` fault holds the device at the start), then the device
  reports. A command started after its deadline is not run: it reports ``expired``.
- **Windows.** A command that carries ``windows`` starts only inside one of them: a device
  that is free (or back online) before or between them waits for the next one to open, and
  the commands queued after it wait too; once the last one closed it reports ``expired``.
- **install** sets the module to the command's version and reports healthy, unless
  an ``install_fails`` fault holds the device when the install completes (report
  ``failed``, the old version stays, health not ok) or a ``health_degrades`` fault does
  (the version is installed but health is not ok, and stays so for every later
  ``validate`` until a rollback or a clean install).
- **rollback** sets the module to the command's version (``DeviceCommand.version``
  is required, so a rollback returns to a named version; removing a module is not
  expressible) and reports healthy: it is the way back from a failed or degraded
  install.
- **validate** reports the current health and changes nothing.
- **offline** makes a device unreachable: commands sent to it are queued and start
  when it returns; a command that completes while its device is offline keeps its
  report until the device returns. **flapping** does the same for ``period_minutes``,
  then lets the device back for as long, and again.
- **rollback_fails** makes the device's rollbacks fail: the version it has stays, health
  not ok.
- **after_minutes** delays a fault until that long after the device applied an install
  (offline after install; a ``health_degrades`` so delayed turns the device's health bad
  from then on, as telemetry shows after a soak, until a rollback or a clean install).
- **Faults** by device list take hold when added; faults by wave take hold when
  that wave is dispatched. ``Fault.wave`` counts from 1 as in scenarios, while
  ``dispatch(..., wave=)`` and ``DeviceCommand.wave`` count from 0: a fault with
  ``wave: 1`` takes hold at ``dispatch(commands, wave=0)``. Its devices are those
  the call's install commands address; with ``count: C`` it picks, among them, the
  C with the lowest rank drawn from the seed (when a wave is dispatched in several
  calls, the fault picks from each call until C devices are hit). ``duration_minutes``
  bounds ``offline`` and ``slow`` (and any kind), counted from when the fault takes hold.
- **Determinism.** Every draw is a hash of the seed and what it is about (see
  ``_draws``); events at one instant are handled in (kind, device id, command id)
  order. The same seed and the same calls give the same reports and ledger, and a
  twin loaded after a restart continues exactly as one that never stopped.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence

from fieldgate.commands import Action, DeviceCommand, DeviceReport, ReportStatus, WindowState
from fieldgate.epoch import at_ms
from fieldgate.scenario import Fault, FaultKind
from fieldgate.twin import _draws
from fieldgate.twin._keys import TwinKeys
from fieldgate.twin._models import DispatchOutcome, DispatchResult, DuplicateCommand, EffectPhase
from fieldgate.twin._state import (
    COMPLETED,
    HELD,
    REPORTED,
    STARTED,
    Binding,
    FaultEntry,
    LedgerEntry,
    SimDevice,
    installed_json,
)
from fieldgate.twin._stored import Changes

MINUTE_MS = 60_000
"""One minute on the virtual clock."""

# Event kinds, in the order they are handled at one instant.
_COMPLETE = 0
_RETURN = 1

_NO_FAULTS: frozenset[FaultKind] = frozenset()


class Simulation:
    """The twin's fleet in memory and its pending events; it knows nothing of the store.

    Each step notes in :attr:`changes` what it changed, for the twin to write through.
    """

    def __init__(
        self,
        *,
        seed: int,
        clock_ms: int,
        next_seq: int,
        devices: Iterable[SimDevice],
        faults: Iterable[FaultEntry],
        effects: Iterable[LedgerEntry],
        keys: TwinKeys,
    ) -> None:
        """Hold the working copy; call :meth:`rebuild_schedule` when it was loaded.

        ``keys`` are the devices' own: every report is signed with its device's.
        """
        self.seed = seed
        self.clock_ms = clock_ms
        self.next_seq = next_seq
        self.devices = {d.id: d for d in devices}
        self.faults = list(faults)
        self.effects = {e.command_id: e for e in effects}
        self.changes = Changes()
        self.keys = keys
        self._events: list[tuple[int, int, str, str]] = []

    def rebuild_schedule(self) -> None:
        """Derive device queues and the event heap from the ledger and the fault bindings."""
        for effect in self.effects.values():  # in seq order
            device = self.devices[effect.device_id]
            if effect.completed_ms is not None:
                device.replay(effect)
            if effect.hlc is not None and effect.hlc > (device.hlc_wall, device.hlc_counter):
                device.hlc_wall, device.hlc_counter = effect.hlc
            if effect.phase is EffectPhase.queued:
                device.queue += (effect.command_id,)
            elif effect.phase is EffectPhase.running:
                assert effect.due_ms is not None
                device.running = effect.command_id
                self._events.append((effect.due_ms, _COMPLETE, device.id, effect.command_id))
            elif effect.phase is EffectPhase.held:
                device.held += (effect.command_id,)
        for device in self.devices.values():
            for binding in device.bindings:
                until = binding.until_ms
                if (
                    binding.kind is FaultKind.offline
                    and until is not None
                    and until > self.clock_ms
                ):
                    self._events.append((until, _RETURN, device.id, ""))
            if device.queue or device.held:
                self._schedule_return(device, self.clock_ms)
            idle = device.queue and device.running is None and device.reachable(self.clock_ms)
            # A command waiting for its window (or free to start): wake the device then.
            if idle and not self._wake_at_window(
                device, self.effects[device.queue[0]], self.clock_ms, self._events.append
            ):
                self._events.append((self.clock_ms, _RETURN, device.id, ""))
        heapq.heapify(self._events)

    def add_faults(self, faults: Sequence[Fault], t: int) -> None:
        """Add faults at ``t``: device-list faults take hold on their devices at once."""
        for fault in faults:
            entry = FaultEntry(
                seq=len(self.faults),
                fault=fault,
                added_ms=t,
                remaining=fault.count if fault.wave is not None else None,
            )
            self.faults.append(entry)
            self.changes.new_faults[entry.seq] = entry
            for device_id in dict.fromkeys(fault.devices or []):
                self._bind(self.devices[device_id], entry, t)

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int, t: int) -> DispatchResult:
        """Hand ``commands`` of wave index ``wave`` to their devices at ``t``.

        The wave's faults take hold first, on the devices of the call's new install
        commands; a command id already in the ledger is reported as a duplicate and
        changes nothing.
        """
        if any(f.fault.wave == wave + 1 and f.remaining != 0 for f in self.faults):
            installing = [
                c.device_id
                for c in commands
                if c.action is Action.install
                and c.device_id in self.devices
                and c.command_id not in self.effects
            ]
            self._activate_wave_faults(wave, list(dict.fromkeys(installing)), t)
        accepted: list[str] = []
        queued: list[str] = []
        duplicates: list[DuplicateCommand] = []
        unknown: list[str] = []
        for command in commands:
            device = self.devices.get(command.device_id)
            if device is None:
                unknown.append(command.command_id)
                continue
            known = self.effects.get(command.command_id)
            if known is not None:
                duplicates.append(
                    DuplicateCommand.model_construct(
                        command_id=command.command_id,
                        device_id=command.device_id,
                        first_outcome=known.outcome,
                        phase=known.phase,
                        report=known.report(self.keys),
                        conflicting=command != known.command(),
                    )
                )
                continue
            effect = self._accept(command, device, t)
            (accepted if effect.outcome is DispatchOutcome.accepted else queued).append(
                effect.command_id
            )
        return DispatchResult.model_construct(
            at=at_ms(t),
            wave=wave,
            accepted=accepted,
            queued=queued,
            duplicates=duplicates,
            unknown_device=unknown,
        )

    def run(self, until_ms: int) -> list[DeviceReport]:
        """Handle every event up to ``until_ms``; return the reports sent, in order."""
        reports: list[DeviceReport] = []
        events = self._events
        while events and events[0][0] <= until_ms:
            t, kind, device_id, command_id = heapq.heappop(events)
            device = self.devices[device_id]
            if kind == _COMPLETE:
                effect = self.effects[command_id]
                if effect.phase is EffectPhase.running and effect.due_ms == t:
                    self._complete(device, effect, t, reports)
            elif device.reachable(t):
                for held_id in device.held:
                    self._report(device, self.effects[held_id], t, reports)
                device.held = ()
                self._start_next(device, t)
        return reports

    def next_live_event(self) -> int | None:
        """Return the time of the first event that changes anything, dropping no-ops."""
        events = self._events
        while events:
            t, kind, device_id, command_id = events[0]
            if kind == _COMPLETE:
                effect = self.effects[command_id]
                if effect.phase is EffectPhase.running and effect.due_ms == t:
                    return t
            else:
                device = self.devices[device_id]
                waiting = device.held or (device.queue and device.running is None)
                if waiting and device.reachable(t):
                    return t
                if waiting:  # woken for a window while cut off: wake again when it is back
                    heapq.heappop(events)
                    self._schedule_return(device, t)
                    continue
            heapq.heappop(events)
        return None

    def _activate_wave_faults(self, wave: int, device_ids: list[str], t: int) -> None:
        for entry in self.faults:
            if entry.fault.wave != wave + 1 or entry.remaining == 0 or not device_ids:
                continue
            hit = [
                d
                for d in device_ids
                if all(b.fault_seq != entry.seq for b in self.devices[d].bindings)
            ]
            if entry.remaining is not None:
                hit.sort(key=lambda d: _draws.fault_rank(self.seed, entry.seq, d))
                del hit[entry.remaining :]
                entry.remaining -= len(hit)
                self.changes.changed_faults[entry.seq] = entry
            for device_id in hit:
                self._bind(self.devices[device_id], entry, t)

    def _accept(self, command: DeviceCommand, device: SimDevice, t: int) -> LedgerEntry:
        reachable = device.reachable(t)
        outcome = DispatchOutcome.accepted if reachable else DispatchOutcome.queued
        effect = LedgerEntry.accept(command, self.next_seq, outcome, t)
        self.next_seq += 1
        self.effects[effect.command_id] = effect
        self.changes.new_effects[effect.command_id] = effect
        device.queue += (effect.command_id,)
        if reachable:
            self._start_next(device, t)
        else:
            self._schedule_return(device, t)
        return effect

    def _bind(self, device: SimDevice, entry: FaultEntry, t: int) -> None:
        fault = entry.fault
        period = None if fault.period_minutes is None else fault.period_minutes * MINUTE_MS
        if fault.after_minutes is not None:
            # Holds nothing until the device applies an install (see _start_delayed).
            binding = Binding(entry.seq, fault.kind, None, None, True, period)
        else:
            minutes = fault.duration_minutes
            until = None if minutes is None else t + minutes * MINUTE_MS
            binding = Binding(entry.seq, fault.kind, t, until, False, period)
        device.bindings += (binding,)
        self.changes.devices[device.id] = device
        self._push_return(device, binding)

    def _push_return(self, device: SimDevice, binding: Binding) -> None:
        if binding.kind is FaultKind.offline and binding.until_ms is not None:
            heapq.heappush(self._events, (binding.until_ms, _RETURN, device.id, ""))

    def _start_delayed(self, device: SimDevice, t: int) -> None:
        """Start the device's delayed faults: an install was applied at ``t``."""
        started = []
        for binding in device.bindings:
            if binding.delayed and binding.since_ms is None:
                fault = self.faults[binding.fault_seq].fault
                binding.since_ms = t + (fault.after_minutes or 0) * MINUTE_MS
                minutes = fault.duration_minutes
                binding.until_ms = (
                    None if minutes is None else binding.since_ms + minutes * MINUTE_MS
                )
                started.append(binding)
        if started:
            self.changes.devices[device.id] = device
            for binding in started:
                self._push_return(device, binding)

    def _cure_delayed(self, device: SimDevice, t: int) -> None:
        """End delayed degradations: a rollback or a clean install put a working version on."""
        cured = False
        for binding in device.bindings:
            if (
                binding.delayed
                and binding.kind is FaultKind.health_degrades
                and binding.since_ms is not None
                and (binding.until_ms is None or binding.until_ms > t)
            ):
                binding.until_ms = max(t, binding.since_ms)
                cured = True
        if cured:
            self.changes.devices[device.id] = device

    def _wake_at_window(
        self,
        device: SimDevice,
        effect: LedgerEntry,
        t: int,
        push: Callable[[tuple[int, int, str, str]], None],
    ) -> bool:
        """Wake the device when the window of ``effect``, its next command, opens.

        Returns:
            Whether the command waits for a window.
        """
        if effect.windows is None or effect.window_state(t) is not WindowState.waiting:
            return False
        opening = effect.next_opening_ms(t)
        assert opening is not None and opening > t
        push((opening, _RETURN, device.id, ""))
        return True

    def _schedule_return(self, device: SimDevice, t: int) -> None:
        back = device.back_online_ms(t)
        if back is not None and back > t:
            heapq.heappush(self._events, (back, _RETURN, device.id, ""))

    def _start_next(self, device: SimDevice, t: int) -> None:
        queue = device.queue
        if device.running is not None or not queue or not device.reachable(t):
            return
        effect = self.effects[queue[0]]
        # Outside its windows a command does not start: the device waits for the next one
        # (and the commands after it wait too, in dispatch order).
        if effect.windows is not None and self._wake_at_window(
            device, effect, t, push=self._push_event
        ):
            return
        device.queue = queue[1:]
        effect.phase = EffectPhase.running
        effect.started_ms = t
        if effect.expired():
            due = t  # the device refuses at once; the report says expired
        else:
            slow = bool(device.bindings) and device.under(FaultKind.slow, t)
            due = t + _draws.duration_ms(self.seed, effect.command_id, effect.action, slow)
        effect.due_ms = due
        effect.dirty |= STARTED
        device.running = effect.command_id
        self.changes.changed_effects[effect.command_id] = effect
        heapq.heappush(self._events, (due, _COMPLETE, device.id, effect.command_id))

    def _push_event(self, event: tuple[int, int, str, str]) -> None:
        heapq.heappush(self._events, event)

    def _complete(
        self, device: SimDevice, effect: LedgerEntry, t: int, reports: list[DeviceReport]
    ) -> None:
        seed, module = self.seed, effect.module
        before = device.installed.get(module)
        if effect.expired():
            status = ReportStatus.expired
        elif effect.action is Action.validate:
            status = ReportStatus.applied
        else:
            # Most devices are under no fault: one test spares them the three below.
            faults = device.faults_at(t) if device.bindings else _NO_FAULTS
            action = effect.action
            if faults and action is Action.install and FaultKind.install_fails in faults:
                status = ReportStatus.failed
                device.ok, device.score = False, _draws.failed_score(seed, effect.command_id)
            elif faults and action is Action.install and FaultKind.health_degrades in faults:
                status = ReportStatus.applied
                device.installed[module] = effect.version
                device.ok, device.score = False, _draws.degraded_score(seed, effect.command_id)
            elif faults and action is Action.rollback and FaultKind.rollback_fails in faults:
                status = ReportStatus.failed
                device.ok, device.score = False, _draws.failed_score(seed, effect.command_id)
            else:  # a clean install, or a rollback: the device runs a version that works
                status = ReportStatus.applied
                device.installed[module] = effect.version
                device.ok, device.score = True, _draws.healthy_score(seed, effect.command_id)
                if device.bindings:
                    self._cure_delayed(device, t)
            installed = action is Action.install and status is ReportStatus.applied
            if installed and device.bindings:
                self._start_delayed(device, t)
        effect.status = status
        effect.completed_ms = t
        effect.version_before = before
        effect.version_after = device.installed.get(module)
        effect.health_ok, effect.health_score = device.health_values(t)
        effect.dirty |= COMPLETED
        device.running = None
        self.changes.changed_effects[effect.command_id] = effect
        if device.reachable(t):
            self._report(device, effect, t, reports)
        else:
            effect.phase = EffectPhase.held
            effect.dirty |= HELD
            device.held += (effect.command_id,)
            self._schedule_return(device, t)
        self._start_next(device, t)

    def _report(
        self, device: SimDevice, effect: LedgerEntry, t: int, reports: list[DeviceReport]
    ) -> None:
        if t > device.hlc_wall:
            device.hlc_wall, device.hlc_counter = t, 0
        else:
            device.hlc_counter += 1
        effect.installed_json = installed_json(device.installed)
        effect.report_signature = None
        effect.note = device.note or None
        effect.hlc = (device.hlc_wall, device.hlc_counter)
        effect.reported_ms = t
        effect.phase = EffectPhase.done
        effect.dirty |= REPORTED
        self.changes.changed_effects[effect.command_id] = effect
        # Built once, from the device itself: no encoding to JSON and back.
        reports.append(effect.signed_report(self.keys, device.installed))

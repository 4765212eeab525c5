"""The fleet twin: simulated sites and devices on a virtual clock, written through to the store.

How the simulation reads:

- **Clock.** Virtual, in whole milliseconds (UTC). It moves only through
  :meth:`FleetTwin.advance` and :meth:`FleetTwin.settle`.
- **Devices run one command at a time**, in dispatch order. A command starts when
  its device is reachable and idle, runs for a duration drawn from the seed and the
  command id (install 2-6 min, rollback 1-3 min, validate 10-30 s; five times as
  long when a ``slow`` fault holds the device at the start), then the device
  reports. A command started after its deadline is not run: it reports ``expired``.
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
  report until the device returns.
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

Every mutating call (``create``, ``add_faults``, ``dispatch``, ``advance``, ``settle``,
``set_note``, ``set_label``) writes its changes through in one transaction before it
returns. A twin object is not thread-safe; one process drives one twin at a time
(a second writer is refused through the fleet row's generation).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fieldgate.commands import (
    Action,
    DeviceCommand,
    DeviceReport,
    ReportStatus,
)
from fieldgate.epoch import at_ms, to_ms
from fieldgate.errors import InputInvalid, NotFound, StoreError
from fieldgate.fleet import Device, Site
from fieldgate.scenario import Fault, FaultKind, Injection, Scenario
from fieldgate.store._engine import for_writing, reason_of
from fieldgate.twin import _draws
from fieldgate.twin._models import (
    DeviceState,
    DispatchOutcome,
    DispatchResult,
    DuplicateCommand,
    Effect,
    EffectPhase,
    PendingCommand,
)
from fieldgate.twin._state import (
    Binding,
    FaultEntry,
    LedgerEntry,
    SimDevice,
    at_or_none,
    to_json,
)
from fieldgate.twin._tables import DEVICES as _DEVICES
from fieldgate.twin._tables import EFFECTS as _EFFECTS
from fieldgate.twin._tables import FAULTS as _FAULTS
from fieldgate.twin._tables import FLEETS as _FLEETS
from fieldgate.twin._tables import bulk_insert, bulk_update, init_twin_store

_ONE_MS = timedelta(milliseconds=1)
_MINUTE_MS = 60_000
_MAX_SEED = 2**63 - 1

# Event kinds, in the order they are handled at one instant.
_COMPLETE = 0
_RETURN = 1


def _invalid(where: str, field_path: str, rule: str) -> InputInvalid:
    return InputInvalid(where, [(field_path, rule)])


class FleetTwin:
    """A simulated fleet that behaves like the edge transport, on a virtual clock with a seed.

    Build one with :meth:`create` (or :meth:`create_or_load`, :meth:`from_scenario`)
    and continue it after a restart with :meth:`load`.
    """

    def __init__(
        self,
        engine: Engine,
        twin_id: str,
        *,
        seed: int,
        start_ms: int,
        clock_ms: int,
        generation: int,
        next_seq: int,
        sites: Sequence[Site],
        devices: Iterable[SimDevice],
        faults: Iterable[FaultEntry] = (),
        effects: Iterable[LedgerEntry] = (),
    ) -> None:
        """Assemble a twin from its parts; use :meth:`create` or :meth:`load` instead."""
        self._engine = engine
        self._id = twin_id
        self._seed = seed
        self._start_ms = start_ms
        self._clock_ms = clock_ms
        self._generation = generation
        self._next_seq = next_seq
        self._sites = {s.id: s for s in sites}
        self._devices = {d.id: d for d in devices}
        self._faults = list(faults)
        self._effects = {e.command_id: e for e in effects}
        self._events: list[tuple[int, int, str, str]] = []
        self._broken: str | None = None
        # What the next write-through must store.
        self._dirty_devices: dict[str, SimDevice] = {}
        self._new_effects: dict[str, LedgerEntry] = {}
        self._changed_effects: dict[str, LedgerEntry] = {}
        self._new_faults: dict[int, FaultEntry] = {}
        self._changed_faults: dict[int, FaultEntry] = {}

    # ------------------------------------------------------------------ building

    @classmethod
    def create(
        cls,
        engine: Engine,
        twin_id: str,
        sites: Sequence[Site],
        devices: Sequence[Device],
        seed: int,
        start: datetime,
    ) -> FleetTwin:
        """Create and store a new twin of ``sites`` and ``devices`` with its clock at ``start``.

        Raises:
            InputInvalid: the id is taken, ``start`` has no time zone, the seed is out of
                range, or a site or device id occurs twice.
            NotFound: a device names a site that is not among ``sites``.
        """
        where = "FleetTwin.create"
        if not twin_id or len(twin_id) > 128:
            raise _invalid(where, "twin_id", f"must be 1 to 128 characters, got {twin_id!r}")
        if isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED:
            raise _invalid(where, "seed", f"must be an integer from 0 to 2**63-1, got {seed!r}")
        if start.tzinfo is None:
            raise _invalid(where, "start", f"must carry a time zone, got {start.isoformat()}")
        site_map: dict[str, Site] = {}
        for index, site in enumerate(sites):
            if site.id in site_map:
                raise _invalid(where, f"sites[{index}]", f"site {site.id!r} is listed twice")
            site_map[site.id] = site
        twin_devices: dict[str, SimDevice] = {}
        for index, device in enumerate(devices):
            if device.id in twin_devices:
                raise _invalid(where, f"devices[{index}]", f"device {device.id!r} occurs twice")
            if device.site not in site_map:
                raise NotFound(
                    f"devices[{index}]: device {device.id!r} is at site {device.site!r}, "
                    f"which is not among the twin's sites"
                )
            twin_devices[device.id] = SimDevice.of(device)
        start_ms = to_ms(start)
        twin = cls(
            engine,
            twin_id,
            seed=seed,
            start_ms=start_ms,
            clock_ms=start_ms,
            generation=0,
            next_seq=0,
            sites=list(site_map.values()),
            devices=twin_devices.values(),
        )
        init_twin_store(engine)
        taken = _invalid(where, "twin_id", f"twin {twin_id!r} already exists (load it instead)")
        try:
            with for_writing(engine).begin() as conn:
                if conn.execute(select(_FLEETS.c.id).where(_FLEETS.c.id == twin_id)).first():
                    raise taken
                conn.execute(
                    _FLEETS.insert(),
                    {
                        "id": twin_id,
                        "seed": seed,
                        "start_ms": start_ms,
                        "clock_ms": start_ms,
                        "generation": 0,
                        "next_seq": 0,
                        "sites": json.dumps([s.model_dump(mode="json") for s in site_map.values()]),
                    },
                )
                rows = [d.row(twin_id) for d in twin_devices.values()]
                bulk_insert(conn, _DEVICES, SimDevice.COLUMNS, rows)
        except IntegrityError:
            raise taken from None
        except SQLAlchemyError as exc:
            raise StoreError(
                f"fleet twin {twin_id!r}: could not be stored: {reason_of(exc)}"
            ) from exc
        return twin

    @classmethod
    def load(cls, engine: Engine, twin_id: str) -> FleetTwin:
        """Load a stored twin; it continues exactly where its last call left it.

        Raises:
            NotFound: no twin with this id is stored.
        """
        init_twin_store(engine)
        try:
            with engine.connect() as conn:
                fleet = conn.execute(select(_FLEETS).where(_FLEETS.c.id == twin_id)).first()
                if fleet is None:
                    raise NotFound(f"fleet twin {twin_id!r} does not exist")
                devices = [
                    SimDevice.from_row(row)
                    for row in conn.execute(
                        select(_DEVICES)
                        .where(_DEVICES.c.twin_id == twin_id)
                        .order_by(_DEVICES.c.device_id)
                    )
                ]
                faults = [
                    FaultEntry.from_row(row)
                    for row in conn.execute(
                        select(_FAULTS).where(_FAULTS.c.twin_id == twin_id).order_by(_FAULTS.c.seq)
                    )
                ]
                effects = [
                    LedgerEntry.from_row(row)
                    for row in conn.execute(
                        select(_EFFECTS)
                        .where(_EFFECTS.c.twin_id == twin_id)
                        .order_by(_EFFECTS.c.seq)
                    )
                ]
        except SQLAlchemyError as exc:
            raise StoreError(
                f"fleet twin {twin_id!r}: could not be read: {reason_of(exc)}"
            ) from exc
        twin = cls(
            engine,
            twin_id,
            seed=fleet.seed,
            start_ms=fleet.start_ms,
            clock_ms=fleet.clock_ms,
            generation=fleet.generation,
            next_seq=fleet.next_seq,
            sites=[Site.model_validate(s) for s in json.loads(fleet.sites)],
            devices=devices,
            faults=faults,
            effects=effects,
        )
        twin._rebuild_schedule()
        return twin

    @classmethod
    def create_or_load(
        cls,
        engine: Engine,
        twin_id: str,
        sites: Sequence[Site],
        devices: Sequence[Device],
        seed: int,
        start: datetime,
    ) -> FleetTwin:
        """Load the twin ``twin_id`` if it is stored, else create it.

        Raises:
            InputInvalid: a stored twin has another seed, start or set of devices.
        """
        try:
            twin = cls.load(engine, twin_id)
        except NotFound:
            try:
                return cls.create(engine, twin_id, sites, devices, seed, start)
            except InputInvalid as refused:
                try:  # another process may have created it meanwhile
                    twin = cls.load(engine, twin_id)
                except NotFound:
                    raise refused from None
        where = "FleetTwin.create_or_load"
        if twin.seed != seed:
            raise _invalid(
                where, "seed", f"twin {twin_id!r} is stored with seed {twin.seed}, not {seed}"
            )
        if start.tzinfo is None or twin._start_ms != to_ms(start):
            raise _invalid(
                where,
                "start",
                f"twin {twin_id!r} started at {twin.started_at.isoformat()}, "
                f"not {start.isoformat()}",
            )
        if set(twin._devices) != {d.id for d in devices}:
            raise _invalid(where, "devices", f"twin {twin_id!r} is stored with other devices")
        return twin

    @classmethod
    def from_scenario(
        cls, engine: Engine, twin_id: str, scenario: Scenario, seed: int
    ) -> FleetTwin:
        """Create a twin of a scenario's fleet at its start, with its faults and device injections.

        Injections into ``telemetry.note`` and ``device.labels.<key>`` are applied; the
        others (manifest descriptions, tickets) are not the twin's and are left out.
        """
        twin = cls.create(
            engine,
            twin_id,
            scenario.fleet.sites,
            scenario.fleet.all_devices(),
            seed,
            scenario.context.now,
        )
        if scenario.faults:
            twin.add_faults(scenario.faults)
        for injection in scenario.injections:
            twin.inject(injection)
        return twin

    def _rebuild_schedule(self) -> None:
        """Derive device queues and the event heap from the ledger and the fault bindings."""
        for effect in self._effects.values():  # in seq order
            device = self._devices[effect.device_id]
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
        for device in self._devices.values():
            for binding in device.bindings:
                until = binding.until_ms
                if (
                    binding.kind is FaultKind.offline
                    and until is not None
                    and until > self._clock_ms
                ):
                    self._events.append((until, _RETURN, device.id, ""))
            if device.queue or device.held:
                self._schedule_return(device, self._clock_ms)
        heapq.heapify(self._events)

    # ------------------------------------------------------------------ reading

    @property
    def twin_id(self) -> str:
        """The twin's id."""
        return self._id

    @property
    def seed(self) -> int:
        """The seed every simulated outcome derives from."""
        return self._seed

    @property
    def started_at(self) -> datetime:
        """The virtual clock at creation (UTC)."""
        return at_ms(self._start_ms)

    @property
    def now(self) -> datetime:
        """The virtual clock (UTC)."""
        return at_ms(self._clock_ms)

    def site(self, site_id: str) -> Site:
        """Return the site ``site_id``."""
        try:
            return self._sites[site_id]
        except KeyError:
            raise NotFound(f"site {site_id!r} is not in fleet twin {self._id!r}") from None

    def sites(self) -> list[Site]:
        """Return the twin's sites."""
        return list(self._sites.values())

    def _device(self, device_id: str) -> SimDevice:
        try:
            return self._devices[device_id]
        except KeyError:
            raise NotFound(f"device {device_id!r} is not in fleet twin {self._id!r}") from None

    def device(self, device_id: str) -> DeviceState:
        """Return device ``device_id`` as it is now."""
        return self._device(device_id).view(self._clock_ms)

    def devices(self) -> list[DeviceState]:
        """Return every device as it is now, sorted by id."""
        return [self._devices[d].view(self._clock_ms) for d in sorted(self._devices)]

    def reachable(self, device_id: str) -> bool:
        """Tell whether ``device_id`` is online now."""
        return self._device(device_id).reachable(self._clock_ms)

    def telemetry(self, device_id: str) -> dict[str, Any]:
        """Return what the device publishes about itself; ``health.note`` is untrusted text."""
        device = self._device(device_id)
        return {
            "device_id": device.id,
            "site": device.site,
            "online": device.reachable(self._clock_ms),
            "health": device.health().model_dump(),
            "installed": dict(device.installed),
            "labels": dict(device.labels),
            "at": self.now.isoformat(),
        }

    def versions(self, module: str) -> dict[str, int]:
        """Count devices by installed version of ``module``; devices without it are left out."""
        counts = Counter(
            d.installed[module] for d in self._devices.values() if module in d.installed
        )
        return dict(sorted(counts.items()))

    def touched(self) -> set[str]:
        """Return the ids of devices that were sent any command (delivered or still queued)."""
        return {e.device_id for e in self._effects.values()}

    def effects(self, device_id: str | None = None) -> list[Effect]:
        """Return the effect ledger in dispatch order, for one device or all."""
        if device_id is not None:
            self._device(device_id)
        return [
            e.public()
            for e in self._effects.values()
            if device_id is None or e.device_id == device_id
        ]

    def pending(self) -> list[PendingCommand]:
        """Return dispatched commands whose report has not gone out, in dispatch order."""
        return [
            PendingCommand.model_construct(
                command_id=e.command_id,
                device_id=e.device_id,
                action=e.action,
                module=e.module,
                version=e.version,
                phase=e.phase,
                dispatched_at=at_ms(e.dispatched_ms),
                due_at=at_or_none(e.due_ms),
            )
            for e in self._effects.values()
            if e.phase is not EffectPhase.done
        ]

    def next_event(self) -> datetime | None:
        """Return when the next pending command can make progress (None if none can)."""
        t = self._next_live_event()
        return None if t is None else at_ms(t)

    def faults(self) -> list[Fault]:
        """Return the faults added so far, in order."""
        return [f.fault for f in self._faults]

    def in_maintenance(self, site_id: str, at: datetime | None = None) -> bool:
        """Tell whether ``site_id`` is inside a maintenance window at ``at`` (default: now).

        Windows are read in the site's own time zone.
        """
        return self.site(site_id).in_maintenance(self.now if at is None else at)

    def next_window(self, site_id: str, at: datetime | None = None) -> datetime | None:
        """Return when the next window of ``site_id`` opens at or after ``at`` (default: now).

        Returns ``at`` itself when a window is open then, and None when the site has none.
        """
        return self.site(site_id).next_maintenance(self.now if at is None else at)

    # ------------------------------------------------------------------ changing

    def add_faults(self, faults: Sequence[Fault]) -> None:
        """Add faults: device-list faults take hold now, wave faults when their wave is dispatched.

        Raises:
            NotFound: a fault names a device the twin does not have (nothing is added).
        """
        self._check_usable()
        for index, fault in enumerate(faults):
            for device_id in fault.devices or []:
                if device_id not in self._devices:
                    raise NotFound(
                        f"faults[{index}].devices: device {device_id!r} is not in "
                        f"fleet twin {self._id!r}"
                    )
        t = self._clock_ms
        for fault in faults:
            entry = FaultEntry(
                seq=len(self._faults),
                fault=fault,
                added_ms=t,
                remaining=fault.count if fault.wave is not None else None,
            )
            self._faults.append(entry)
            self._new_faults[entry.seq] = entry
            for device_id in dict.fromkeys(fault.devices or []):
                self._bind(self._devices[device_id], entry, t)
        self._commit()

    def set_note(self, device_id: str, text: str) -> None:
        """Set the free-text note the device sends with its health (untrusted text)."""
        self._check_usable()
        device = self._device(device_id)
        device.note = text
        self._dirty_devices[device.id] = device
        self._commit()

    def set_label(self, device_id: str, key: str, value: str) -> None:
        """Set or override one label of a device."""
        self._check_usable()
        device = self._device(device_id)
        device.labels[key] = value
        self._dirty_devices[device.id] = device
        self._commit()

    def inject(self, injection: Injection) -> bool:
        """Apply a scenario injection that lands on a device; return whether it did.

        ``telemetry.note`` sets the device note and ``device.labels.<key>`` a label;
        other fields are not the twin's and return False.
        """
        if injection.device is None:
            return False
        if injection.field == "telemetry.note":
            self.set_note(injection.device, injection.text)
            return True
        if injection.field.startswith("device.labels."):
            key = injection.field.removeprefix("device.labels.")
            self.set_label(injection.device, key, injection.text)
            return True
        return False

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> DispatchResult:
        """Hand commands to their devices at the current virtual time.

        Args:
            commands: The commands, each taking effect at most once per twin by command id.
            wave: Index (from 0) of the rollout wave this call dispatches. Wave faults
                (``Fault.wave`` from 1) for ``wave + 1`` take hold on the devices of this
                call's install commands before they are delivered.

        Returns:
            Command ids by outcome: ``accepted`` (device reachable), ``queued`` (device
            offline; delivered when it returns), ``duplicates`` (the id was dispatched
            before: nothing happens; each carries the stored outcome, phase and report)
            and ``unknown_device``.
        """
        self._check_usable()
        if isinstance(wave, bool) or wave < 0:
            raise _invalid(
                "FleetTwin.dispatch", "wave", f"must be a wave index from 0, got {wave!r}"
            )
        t = self._clock_ms
        installing = [
            c.device_id
            for c in commands
            if c.action is Action.install
            and c.device_id in self._devices
            and c.command_id not in self._effects
        ]
        self._activate_wave_faults(wave, list(dict.fromkeys(installing)), t)
        accepted: list[str] = []
        queued: list[str] = []
        duplicates: list[DuplicateCommand] = []
        unknown: list[str] = []
        for command in commands:
            device = self._devices.get(command.device_id)
            if device is None:
                unknown.append(command.command_id)
                continue
            known = self._effects.get(command.command_id)
            if known is not None:
                duplicates.append(
                    DuplicateCommand.model_construct(
                        command_id=command.command_id,
                        device_id=command.device_id,
                        first_outcome=known.outcome,
                        phase=known.phase,
                        report=known.report(),
                        conflicting=command != known.command(),
                    )
                )
                continue
            effect = self._accept(command, device, t)
            (accepted if effect.outcome is DispatchOutcome.accepted else queued).append(
                effect.command_id
            )
        self._commit()
        return DispatchResult.model_construct(
            at=at_ms(t),
            wave=wave,
            accepted=accepted,
            queued=queued,
            duplicates=duplicates,
            unknown_device=unknown,
        )

    def advance(self, to: datetime | timedelta | float) -> list[DeviceReport]:
        """Move the virtual clock and return the reports devices send on the way.

        Args:
            to: An instant (time-zone aware), a timedelta, or a number of minutes from now.
                It may not lie before the current clock.

        Returns:
            Reports in the order they were sent, each stamped with a hybrid logical clock
            reading (virtual milliseconds, a counter for readings within one millisecond,
            and the device id as node).
        """
        self._check_usable()
        target = self._target_ms(to)
        reports = self._run(target)
        self._clock_ms = target
        self._commit()
        return reports

    def settle(self, within: timedelta | float = 24 * 60) -> list[DeviceReport]:
        """Advance until no pending command can make progress, at most ``within`` (minutes).

        The clock stops at the last event handled, so that nothing waits needlessly.
        Commands for devices offline for ever stay pending.
        """
        self._check_usable()
        limit = self._clock_ms + self._span_ms(within, "within")
        reports: list[DeviceReport] = []
        while (t := self._next_live_event()) is not None and t <= limit:
            reports.extend(self._run(t))
            self._clock_ms = t
        self._commit()
        return reports

    # ------------------------------------------------------------------ simulation

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise StoreError(self._broken)

    def _span_ms(self, span: timedelta | float, name: str) -> int:
        if isinstance(span, timedelta):
            ms = span // _ONE_MS
        elif isinstance(span, int | float) and not isinstance(span, bool):
            ms = round(span * _MINUTE_MS)
        else:
            raise _invalid(
                f"FleetTwin ({self._id})", name, f"expected minutes or a timedelta, got {span!r}"
            )
        if ms < 0:
            raise _invalid(f"FleetTwin ({self._id})", name, f"may not be negative, got {span!r}")
        return ms

    def _target_ms(self, to: datetime | timedelta | float) -> int:
        if isinstance(to, datetime):
            if to.tzinfo is None:
                raise _invalid(
                    "FleetTwin.advance", "to", f"must carry a time zone, got {to.isoformat()}"
                )
            target = to_ms(to)
            if target < self._clock_ms:
                raise _invalid(
                    "FleetTwin.advance",
                    "to",
                    f"{to.isoformat()} is before the twin's clock {self.now.isoformat()}",
                )
            return target
        return self._clock_ms + self._span_ms(to, "to")

    def _bind(self, device: SimDevice, entry: FaultEntry, t: int) -> None:
        minutes = entry.fault.duration_minutes
        until = None if minutes is None else t + minutes * _MINUTE_MS
        device.bindings += (Binding(entry.seq, entry.fault.kind, t, until),)
        self._dirty_devices[device.id] = device
        if entry.fault.kind is FaultKind.offline and until is not None:
            heapq.heappush(self._events, (until, _RETURN, device.id, ""))

    def _activate_wave_faults(self, wave: int, device_ids: list[str], t: int) -> None:
        for entry in self._faults:
            if entry.fault.wave != wave + 1 or entry.remaining == 0 or not device_ids:
                continue
            hit = [
                d
                for d in device_ids
                if all(b.fault_seq != entry.seq for b in self._devices[d].bindings)
            ]
            if entry.remaining is not None:
                hit.sort(key=lambda d: _draws.fault_rank(self._seed, entry.seq, d))
                del hit[entry.remaining :]
                entry.remaining -= len(hit)
                self._changed_faults[entry.seq] = entry
            for device_id in hit:
                self._bind(self._devices[device_id], entry, t)

    def _accept(self, command: DeviceCommand, device: SimDevice, t: int) -> LedgerEntry:
        reachable = device.reachable(t)
        outcome = DispatchOutcome.accepted if reachable else DispatchOutcome.queued
        effect = LedgerEntry.accept(command, self._next_seq, outcome, t)
        self._next_seq += 1
        self._effects[effect.command_id] = effect
        self._new_effects[effect.command_id] = effect
        device.queue += (effect.command_id,)
        if reachable:
            self._start_next(device, t)
        else:
            self._schedule_return(device, t)
        return effect

    def _schedule_return(self, device: SimDevice, t: int) -> None:
        back = device.back_online_ms(t)
        if back is not None and back > t:
            heapq.heappush(self._events, (back, _RETURN, device.id, ""))

    def _start_next(self, device: SimDevice, t: int) -> None:
        if device.running is not None or not device.queue or not device.reachable(t):
            return
        effect = self._effects[device.queue[0]]
        device.queue = device.queue[1:]
        effect.phase = EffectPhase.running
        effect.started_ms = t
        if effect.expired():
            due = t  # the device refuses at once; the report says expired
        else:
            slow = bool(device.bindings) and device.under(FaultKind.slow, t)
            due = t + _draws.duration_ms(self._seed, effect.command_id, effect.action, slow)
        effect.due_ms = due
        device.running = effect.command_id
        self._changed_effects[effect.command_id] = effect
        heapq.heappush(self._events, (due, _COMPLETE, device.id, effect.command_id))

    def _run(self, until_ms: int) -> list[DeviceReport]:
        reports: list[DeviceReport] = []
        events = self._events
        while events and events[0][0] <= until_ms:
            t, kind, device_id, command_id = heapq.heappop(events)
            device = self._devices[device_id]
            if kind == _COMPLETE:
                effect = self._effects[command_id]
                if effect.phase is EffectPhase.running and effect.due_ms == t:
                    self._complete(device, effect, t, reports)
            elif device.reachable(t):
                for held_id in device.held:
                    self._report(device, self._effects[held_id], t, reports)
                device.held = ()
                self._start_next(device, t)
        return reports

    def _next_live_event(self) -> int | None:
        """Return the time of the first event that changes anything, dropping no-ops."""
        events = self._events
        while events:
            t, kind, device_id, command_id = events[0]
            if kind == _COMPLETE:
                effect = self._effects[command_id]
                if effect.phase is EffectPhase.running and effect.due_ms == t:
                    return t
            else:
                device = self._devices[device_id]
                waiting = device.held or (device.queue and device.running is None)
                if waiting and device.reachable(t):
                    return t
            heapq.heappop(events)
        return None

    def _complete(
        self, device: SimDevice, effect: LedgerEntry, t: int, reports: list[DeviceReport]
    ) -> None:
        seed, module = self._seed, effect.module
        before = device.installed.get(module)
        if effect.expired():
            status = ReportStatus.expired
        elif effect.action is Action.validate:
            status = ReportStatus.applied
        else:
            faults = device.faults_at(t)
            if effect.action is Action.install and FaultKind.install_fails in faults:
                status = ReportStatus.failed
                device.ok, device.score = False, _draws.failed_score(seed, effect.command_id)
            elif effect.action is Action.install and FaultKind.health_degrades in faults:
                status = ReportStatus.applied
                device.installed[module] = effect.version
                device.ok, device.score = False, _draws.degraded_score(seed, effect.command_id)
            else:  # a clean install, or a rollback: the device runs a version that works
                status = ReportStatus.applied
                device.installed[module] = effect.version
                device.ok, device.score = True, _draws.healthy_score(seed, effect.command_id)
        effect.status = status
        effect.completed_ms = t
        effect.version_before = before
        effect.version_after = device.installed.get(module)
        effect.health_ok, effect.health_score = device.ok, device.score
        device.running = None
        self._changed_effects[effect.command_id] = effect
        if device.reachable(t):
            self._report(device, effect, t, reports)
        else:
            effect.phase = EffectPhase.held
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
        effect.installed_json = to_json(device.installed)
        effect.note = device.note or None
        effect.hlc = (device.hlc_wall, device.hlc_counter)
        effect.reported_ms = t
        effect.phase = EffectPhase.done
        self._changed_effects[effect.command_id] = effect
        report = effect.report()
        assert report is not None
        reports.append(report)

    # ------------------------------------------------------------------ writing through

    def _commit(self) -> None:
        """Write this call's changes in one transaction; on failure the object is retired."""
        try:
            with for_writing(self._engine).begin() as conn:
                self._write(conn)
        except (SQLAlchemyError, StoreError) as exc:
            reason = reason_of(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
            self._broken = (
                f"fleet twin {self._id!r}: a write failed and this object no longer matches the "
                f"store; load the twin again ({reason})"
            )
            raise StoreError(self._broken) from exc
        self._generation += 1
        self._dirty_devices.clear()
        self._new_effects.clear()
        self._changed_effects.clear()
        self._new_faults.clear()
        self._changed_faults.clear()

    def _write(self, conn: Connection) -> None:
        twin_id = self._id
        moved = conn.execute(
            _FLEETS.update()
            .where(_FLEETS.c.id == twin_id, _FLEETS.c.generation == self._generation)
            .values(
                clock_ms=self._clock_ms,
                generation=self._generation + 1,
                next_seq=self._next_seq,
            )
        )
        if moved.rowcount != 1:
            raise StoreError(
                f"fleet twin {twin_id!r} was changed by another writer since generation "
                f"{self._generation}"
            )
        if self._new_faults:
            rows = [f.row(twin_id) for f in self._new_faults.values()]
            bulk_insert(conn, _FAULTS, FaultEntry.COLUMNS, rows)
        changed_faults = [
            (f.remaining, twin_id, seq)
            for seq, f in self._changed_faults.items()
            if seq not in self._new_faults
        ]
        if changed_faults:
            bulk_update(conn, _FAULTS, ("remaining",), ("twin_id", "seq"), changed_faults)
        if self._new_effects:
            bulk_insert(
                conn,
                _EFFECTS,
                LedgerEntry.FIXED + LedgerEntry.MOVING,
                [e.row(twin_id) for e in self._new_effects.values()],
            )
        changed_effects = [
            (*e.moving(), twin_id, cid)
            for cid, e in self._changed_effects.items()
            if cid not in self._new_effects
        ]
        if changed_effects:
            bulk_update(
                conn, _EFFECTS, LedgerEntry.MOVING, ("twin_id", "command_id"), changed_effects
            )
        if self._dirty_devices:
            bulk_update(
                conn,
                _DEVICES,
                ("state",),
                ("twin_id", "device_id"),
                [(d.state_json(), twin_id, d.id) for d in self._dirty_devices.values()],
            )

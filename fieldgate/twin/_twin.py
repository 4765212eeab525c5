"""The fleet twin: simulated sites and devices on a virtual clock, written through to the store.

:class:`FleetTwin` is what callers hold: it checks their arguments, hands the work to
the :class:`~fieldgate.twin._simulation.Simulation` (see ``_simulation`` for how devices
behave and faults take hold) and writes each call's changes through with ``_stored``.

Every mutating call (``create``, ``add_faults``, ``dispatch``, ``advance``,
``advance_while``, ``settle``, ``set_note``, ``set_label``) writes its changes through in
one transaction before it returns, unless the caller groups calls with
:meth:`FleetTwin.deferred`: then they are written together when the block ends. A twin
object is not thread-safe; one process drives one twin at a time (a second writer is
refused through the fleet row's generation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fieldgate.commands import DeviceCommand, DeviceReport
from fieldgate.epoch import at_ms, to_ms
from fieldgate.errors import InputInvalid, NotFound, StoreError
from fieldgate.fleet import Device, Site
from fieldgate.scenario import Fault, Injection, Scenario
from fieldgate.store._engine import for_writing, reason_of
from fieldgate.twin._keys import TwinKeys
from fieldgate.twin._models import (
    DeviceState,
    DispatchResult,
    Effect,
    EffectPhase,
    PendingCommand,
)
from fieldgate.twin._simulation import MINUTE_MS, Simulation
from fieldgate.twin._state import FaultEntry, LedgerEntry, SimDevice, at_or_none
from fieldgate.twin._stored import insert_twin, read_twin, write_changes

_ONE_MS = timedelta(milliseconds=1)
_MAX_SEED = 2**63 - 1


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
        self._start_ms = start_ms
        self._generation = generation
        self._sites = {s.id: s for s in sites}
        self._sim = Simulation(
            seed=seed,
            clock_ms=clock_ms,
            next_seq=next_seq,
            devices=devices,
            faults=faults,
            effects=effects,
            keys=TwinKeys(seed),
        )
        self._broken: str | None = None
        self._deferring = 0
        """How many :meth:`deferred` blocks are open."""
        self._unwritten = False
        """Whether calls made in a :meth:`deferred` block changed what is not written yet."""

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
        stored = insert_twin(
            engine,
            twin_id,
            seed=seed,
            start_ms=start_ms,
            sites=list(site_map.values()),
            devices=twin_devices.values(),
        )
        if not stored:
            raise _invalid(where, "twin_id", f"twin {twin_id!r} already exists (load it instead)")
        return twin

    @classmethod
    def load(cls, engine: Engine, twin_id: str) -> FleetTwin:
        """Load a stored twin; it continues exactly where its last call left it.

        Raises:
            NotFound: no twin with this id is stored.
        """
        stored = read_twin(engine, twin_id)
        twin = cls(
            engine,
            twin_id,
            seed=stored.seed,
            start_ms=stored.start_ms,
            clock_ms=stored.clock_ms,
            generation=stored.generation,
            next_seq=stored.next_seq,
            sites=stored.sites,
            devices=stored.devices,
            faults=stored.faults,
            effects=stored.effects,
        )
        twin._sim.rebuild_schedule()
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
        if set(twin._sim.devices) != {d.id for d in devices}:
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

    # ------------------------------------------------------------------ reading

    @property
    def twin_id(self) -> str:
        """The twin's id."""
        return self._id

    @property
    def seed(self) -> int:
        """The seed every simulated outcome derives from."""
        return self._sim.seed

    @property
    def started_at(self) -> datetime:
        """The virtual clock at creation (UTC)."""
        return at_ms(self._start_ms)

    @property
    def now(self) -> datetime:
        """The virtual clock (UTC)."""
        return at_ms(self._sim.clock_ms)

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
            return self._sim.devices[device_id]
        except KeyError:
            raise NotFound(f"device {device_id!r} is not in fleet twin {self._id!r}") from None

    def device(self, device_id: str) -> DeviceState:
        """Return device ``device_id`` as it is now."""
        return self._device(device_id).view(self._sim.clock_ms)

    def devices(self) -> list[DeviceState]:
        """Return every device as it is now, sorted by id."""
        return [self._sim.devices[d].view(self._sim.clock_ms) for d in sorted(self._sim.devices)]

    def device_ids(self) -> list[str]:
        """Return the id of every simulated device, sorted."""
        return sorted(self._sim.devices)

    def reachable(self, device_id: str) -> bool:
        """Tell whether ``device_id`` is online now."""
        return self._device(device_id).reachable(self._sim.clock_ms)

    @property
    def engine(self) -> Engine:
        """The database the twin writes through to."""
        return self._engine

    def addressee(self, command_id: str) -> str | None:
        """The device a command was dispatched to (None: never dispatched to this twin)."""
        effect = self._sim.effects.get(command_id)
        return effect.device_id if effect is not None else None

    def public_keys(self) -> dict[str, str]:
        """Each simulated device's public key (base64): what the fleet enrolls for it."""
        return self._sim.keys.public_keys(sorted(self._sim.devices))

    def telemetry(self, device_id: str) -> dict[str, Any]:
        """Return what the device publishes about itself; ``health.note`` is untrusted text."""
        device = self._device(device_id)
        return {
            "device_id": device.id,
            "site": device.site,
            "online": device.reachable(self._sim.clock_ms),
            "health": device.health(self._sim.clock_ms).model_dump(),
            "installed": dict(device.installed),
            "labels": dict(device.labels),
            "at": self.now.isoformat(),
        }

    def versions(self, module: str) -> dict[str, int]:
        """Count devices by installed version of ``module``; devices without it are left out."""
        counts = Counter(
            d.installed[module] for d in self._sim.devices.values() if module in d.installed
        )
        return dict(sorted(counts.items()))

    def touched(self) -> set[str]:
        """Return the ids of devices that were sent any command (delivered or still queued)."""
        return {e.device_id for e in self._sim.effects.values()}

    def effects(self, device_id: str | None = None) -> list[Effect]:
        """Return the effect ledger in dispatch order, for one device or all."""
        if device_id is not None:
            self._device(device_id)
        return [
            e.public(self._sim.keys)
            for e in self._sim.effects.values()
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
            for e in self._sim.effects.values()
            if e.phase is not EffectPhase.done
        ]

    def next_event(self) -> datetime | None:
        """Return when the next pending command can make progress (None if none can)."""
        t = self._sim.next_live_event()
        return None if t is None else at_ms(t)

    def faults(self) -> list[Fault]:
        """Return the faults added so far, in order."""
        return [f.fault for f in self._sim.faults]

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
                if device_id not in self._sim.devices:
                    raise NotFound(
                        f"faults[{index}].devices: device {device_id!r} is not in "
                        f"fleet twin {self._id!r}"
                    )
        self._sim.add_faults(faults, self._sim.clock_ms)
        self._commit()

    def set_note(self, device_id: str, text: str) -> None:
        """Set the free-text note the device sends with its health (untrusted text)."""
        self._check_usable()
        device = self._device(device_id)
        device.note = text
        self._sim.changes.devices[device.id] = device
        self._commit()

    def set_label(self, device_id: str, key: str, value: str) -> None:
        """Set or override one label of a device."""
        self._check_usable()
        device = self._device(device_id)
        device.labels[key] = value
        self._sim.changes.devices[device.id] = device
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
        result = self._sim.dispatch(commands, wave, self._sim.clock_ms)
        self._commit()
        return result

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
        reports = self._sim.run(target)
        self._sim.clock_ms = target
        self._commit()
        return reports

    def advance_while(
        self, until: datetime, more: Callable[[list[DeviceReport]], bool]
    ) -> list[DeviceReport]:
        """Advance event by event, written through once: until ``more`` says enough.

        ``more`` sees the reports of each event time as they are sent and answers whether
        to go on; with no event left before ``until``, the clock moves to ``until``. What
        :meth:`advance` called once per event does, in one store transaction.

        Returns:
            Every report sent on the way, in order.
        """
        self._check_usable()
        target = self._target_ms(until)
        reports: list[DeviceReport] = []
        while True:
            t = self._sim.next_live_event()
            if t is None or t > target:
                if target > self._sim.clock_ms:
                    last = self._sim.run(target)
                    self._sim.clock_ms = target
                    reports.extend(last)
                    more(last)
                break
            arrived = self._sim.run(t)
            self._sim.clock_ms = t
            reports.extend(arrived)
            if not more(arrived):
                break
        self._commit()
        return reports

    def settle(self, within: timedelta | float = 24 * 60) -> list[DeviceReport]:
        """Advance until no pending command can make progress, at most ``within`` (minutes).

        The clock stops at the last event handled, so that nothing waits needlessly.
        Commands for devices offline for ever stay pending.
        """
        self._check_usable()
        limit = self._sim.clock_ms + self._span_ms(within, "within")
        reports: list[DeviceReport] = []
        while (t := self._sim.next_live_event()) is not None and t <= limit:
            reports.extend(self._sim.run(t))
            self._sim.clock_ms = t
        self._commit()
        return reports

    # ------------------------------------------------------------------ checking

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise StoreError(self._broken)

    def _span_ms(self, span: timedelta | float, name: str) -> int:
        if isinstance(span, timedelta):
            ms = span // _ONE_MS
        elif isinstance(span, int | float) and not isinstance(span, bool):
            ms = round(span * MINUTE_MS)
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
            if target < self._sim.clock_ms:
                raise _invalid(
                    "FleetTwin.advance",
                    "to",
                    f"{to.isoformat()} is before the twin's clock {self.now.isoformat()}",
                )
            return target
        return self._sim.clock_ms + self._span_ms(to, "to")

    # ------------------------------------------------------------------ writing through

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Group the calls made in the block into one write-through, made when it ends.

        Inside ``with twin.deferred():`` the mutating calls (``dispatch``, ``advance``,
        ``advance_while``, ``settle``, ``add_faults``, ``set_note``, ``set_label``) change
        the twin in memory only; what they changed is merged and written in one
        transaction when the outermost block ends, or earlier at :meth:`flush`. Blocks
        nest; only the outermost one writes.

        The in-memory twin is the truth meanwhile: the twin's own reads (``now``,
        ``devices``, ``effects``, ``pending``, ``versions``, ...) answer from it and are
        current. The store lags until the write: :meth:`load`, or anyone reading the
        twin's tables, sees the twin as it was at the last write.

        Crash semantics: if the process dies inside the block, everything the block's
        calls did is lost together, as if those simulated events never happened; the
        store keeps the consistent twin of before the block, and a restarted worker
        continues from there (commands dispatched in the block are new to it). Reports
        handed out inside the block belong to that lost history: a caller that records
        them durably should do so after the write, not before.

        Failure: a write that fails retires the object exactly as a failed call does
        (:class:`StoreError` now and from every later call; load the twin again), and
        the block's changes are lost with it. When the block raises, what its calls
        changed is still written before the exception goes on, so that the object keeps
        matching the store.

        Raises:
            StoreError: the write at the end failed, or the twin was already retired.
        """
        self._check_usable()
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            if not self._deferring and self._unwritten and self._broken is None:
                self._write()

    def flush(self) -> None:
        """Write now what calls inside :meth:`deferred` changed (nothing unwritten: no-op).

        Raises:
            StoreError: the write failed (the object is retired), or it was retired before.
        """
        self._check_usable()
        if self._unwritten:
            self._write()

    def _commit(self) -> None:
        """Write this call's changes through, or keep them for the end of a deferred block."""
        if self._deferring:
            self._unwritten = True
            return
        self._write()

    def _write(self) -> None:
        """Write the changes noted so far in one transaction; on failure the object is retired."""
        try:
            with for_writing(self._engine).begin() as conn:
                write_changes(
                    conn,
                    self._id,
                    generation=self._generation,
                    clock_ms=self._sim.clock_ms,
                    next_seq=self._sim.next_seq,
                    changes=self._sim.changes,
                )
        except (SQLAlchemyError, StoreError) as exc:
            reason = reason_of(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
            self._broken = (
                f"fleet twin {self._id!r}: a write failed and this object no longer matches the "
                f"store; load the twin again ({reason})"
            )
            raise StoreError(self._broken) from exc
        self._generation += 1
        self._unwritten = False
        self._sim.changes.clear()

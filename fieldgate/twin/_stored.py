"""The twin's stored side: its rows created, read back and written through.

A twin is stored as one fleet row (seed, clocks, the generation that guards against
a second writer, the sites) with device, fault and effect rows under it. What a call
changed is collected in :class:`Changes` and written in one transaction by
:func:`write_changes`; :func:`read_twin` gives back the working copy a restarted
worker continues from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fieldgate.errors import NotFound, StoreError
from fieldgate.fleet import Site
from fieldgate.store._engine import for_writing, reason_of
from fieldgate.twin._state import FaultEntry, LedgerEntry, SimDevice, changed_columns
from fieldgate.twin._tables import DEVICES as _DEVICES
from fieldgate.twin._tables import EFFECTS as _EFFECTS
from fieldgate.twin._tables import FAULTS as _FAULTS
from fieldgate.twin._tables import FLEETS as _FLEETS
from fieldgate.twin._tables import bulk_insert, bulk_update, init_twin_store


@dataclass(slots=True)
class Changes:
    """What the next write-through must store, noted as the twin changes."""

    devices: dict[str, SimDevice] = field(default_factory=dict)
    """Devices whose stored state (note, labels, fault bindings) changed."""
    new_effects: dict[str, LedgerEntry] = field(default_factory=dict)
    """Ledger entries dispatched since the last write, by command id."""
    changed_effects: dict[str, LedgerEntry] = field(default_factory=dict)
    """Ledger entries that moved on since the last write, by command id."""
    new_faults: dict[int, FaultEntry] = field(default_factory=dict)
    """Faults added since the last write, by sequence number."""
    changed_faults: dict[int, FaultEntry] = field(default_factory=dict)
    """Wave faults whose remaining count fell since the last write, by sequence number."""

    def clear(self) -> None:
        """Forget every change, once they are stored."""
        for effects in (self.new_effects, self.changed_effects):
            for effect in effects.values():
                effect.dirty = 0
        self.devices.clear()
        self.new_effects.clear()
        self.changed_effects.clear()
        self.new_faults.clear()
        self.changed_faults.clear()


@dataclass(frozen=True, slots=True)
class StoredTwin:
    """A twin as read back from the store: its fleet row and its working copy."""

    seed: int
    start_ms: int
    clock_ms: int
    generation: int
    next_seq: int
    sites: list[Site]
    devices: list[SimDevice]
    faults: list[FaultEntry]
    effects: list[LedgerEntry]


def insert_twin(
    engine: Engine,
    twin_id: str,
    *,
    seed: int,
    start_ms: int,
    sites: Sequence[Site],
    devices: Iterable[SimDevice],
) -> bool:
    """Store a new twin's fleet row and devices; return False when ``twin_id`` is taken.

    Raises:
        StoreError: the store could not be written.
    """
    init_twin_store(engine)
    try:
        with for_writing(engine).begin() as conn:
            if conn.execute(select(_FLEETS.c.id).where(_FLEETS.c.id == twin_id)).first():
                return False
            conn.execute(
                _FLEETS.insert(),
                {
                    "id": twin_id,
                    "seed": seed,
                    "start_ms": start_ms,
                    "clock_ms": start_ms,
                    "generation": 0,
                    "next_seq": 0,
                    "sites": json.dumps([s.model_dump(mode="json") for s in sites]),
                },
            )
            rows = [d.row(twin_id) for d in devices]
            bulk_insert(conn, _DEVICES, SimDevice.COLUMNS, rows)
    except IntegrityError:
        return False
    except SQLAlchemyError as exc:
        raise StoreError(f"fleet twin {twin_id!r}: could not be stored: {reason_of(exc)}") from exc
    return True


def read_twin(engine: Engine, twin_id: str) -> StoredTwin:
    """Read the stored twin ``twin_id``: devices by id, faults and effects in sequence.

    Raises:
        NotFound: no twin with this id is stored.
        StoreError: the store could not be read.
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
                    select(_EFFECTS).where(_EFFECTS.c.twin_id == twin_id).order_by(_EFFECTS.c.seq)
                )
            ]
    except SQLAlchemyError as exc:
        raise StoreError(f"fleet twin {twin_id!r}: could not be read: {reason_of(exc)}") from exc
    return StoredTwin(
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


def write_changes(
    conn: Connection,
    twin_id: str,
    *,
    generation: int,
    clock_ms: int,
    next_seq: int,
    changes: Changes,
) -> None:
    """Write one call's ``changes`` on ``conn`` and move the fleet row to the next generation.

    Raises:
        StoreError: the fleet row is no longer at ``generation`` (another writer moved it).
    """
    moved = conn.execute(
        _FLEETS.update()
        .where(_FLEETS.c.id == twin_id, _FLEETS.c.generation == generation)
        .values(clock_ms=clock_ms, generation=generation + 1, next_seq=next_seq)
    )
    if moved.rowcount != 1:
        raise StoreError(
            f"fleet twin {twin_id!r} was changed by another writer since generation {generation}"
        )
    if changes.new_faults:
        rows = [f.row(twin_id) for f in changes.new_faults.values()]
        bulk_insert(conn, _FAULTS, FaultEntry.COLUMNS, rows)
    changed_faults = [
        (f.remaining, twin_id, seq)
        for seq, f in changes.changed_faults.items()
        if seq not in changes.new_faults
    ]
    if changed_faults:
        bulk_update(conn, _FAULTS, ("remaining",), ("twin_id", "seq"), changed_faults)
    if changes.new_effects:
        bulk_insert(
            conn,
            _EFFECTS,
            LedgerEntry.FIXED + LedgerEntry.MOVING,
            [e.row(twin_id) for e in changes.new_effects.values()],
        )
    # Each entry writes only the columns that moved: entries that moved alike (started,
    # completed and reported, held, ...) go together in one statement.
    alike: dict[int, list[LedgerEntry]] = {}
    for cid, e in changes.changed_effects.items():
        if cid not in changes.new_effects:
            alike.setdefault(e.dirty, []).append(e)
    for dirty, entries in alike.items():
        columns, values = changed_columns(dirty)
        rows = [(*values(e), twin_id, e.command_id) for e in entries]
        bulk_update(conn, _EFFECTS, columns, ("twin_id", "command_id"), rows)
    if changes.devices:
        bulk_update(
            conn,
            _DEVICES,
            ("state",),
            ("twin_id", "device_id"),
            [(d.state_json(), twin_id, d.id) for d in changes.devices.values()],
        )

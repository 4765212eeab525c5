"""The twin's own tables: fleets, devices, faults and the effect ledger.

Instants are stored as integers since the epoch (UTC: milliseconds for the virtual
clock, microseconds for a command's own times) so that SQLite and PostgreSQL
round-trip them exactly; documents (sites, device state, faults) are JSON text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import compress, repeat
from operator import is_not
from typing import Any

from sqlalchemy import BigInteger, Table, Text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Field, SQLModel

from fieldgate.errors import StoreError


class TwinFleetRow(SQLModel, table=True):
    """One simulated fleet: its seed, virtual clock and sites."""

    __tablename__ = "twin_fleets"

    id: str = Field(primary_key=True, max_length=128)
    """Twin id chosen by the caller."""
    seed: int = Field(sa_type=BigInteger)
    """Seed every simulated outcome is derived from."""
    start_ms: int = Field(sa_type=BigInteger)
    """Virtual clock at creation, ms since the epoch (UTC)."""
    clock_ms: int = Field(sa_type=BigInteger)
    """Virtual clock now, ms since the epoch (UTC)."""
    generation: int = Field(sa_type=BigInteger)
    """Bumped by every write; a writer holding an older generation is refused."""
    next_seq: int = Field(sa_type=BigInteger)
    """Sequence number the next ledger entry gets."""
    sites: str = Field(sa_type=Text)
    """The sites as a JSON list of fieldgate/v1 ``Site`` documents."""


class TwinDeviceRow(SQLModel, table=True):
    """One simulated device; what changes lives in ``state``."""

    __tablename__ = "twin_devices"

    twin_id: str = Field(primary_key=True, foreign_key="twin_fleets.id", max_length=128)
    """Twin the device belongs to."""
    device_id: str = Field(primary_key=True, max_length=128)
    """Device id."""
    site: str = Field(max_length=64)
    """Site id."""
    device_class: str = Field(max_length=64)
    """Device class."""
    arch: str = Field(max_length=64)
    """CPU architecture."""
    memory_mb: int
    """Memory in MiB."""
    state: str = Field(sa_type=Text)
    """JSON: modules installed at the start, labels, note, fault bindings.

    What commands changed since (installed modules, health) is in the ledger and
    replayed from it on load.
    """


class TwinFaultRow(SQLModel, table=True):
    """One fault added to a twin, with what is left of its device budget."""

    __tablename__ = "twin_faults"

    twin_id: str = Field(primary_key=True, foreign_key="twin_fleets.id", max_length=128)
    """Twin the fault belongs to."""
    seq: int = Field(primary_key=True)
    """Order in which faults were added, from 0."""
    fault: str = Field(sa_type=Text)
    """The fieldgate/v1 ``Fault`` as JSON."""
    added_ms: int = Field(sa_type=BigInteger)
    """Virtual time the fault was added."""
    remaining: int | None = None
    """For a wave fault with a count: devices it may still hit."""


class TwinEffectRow(SQLModel, table=True):
    """One entry of the effect ledger: a command accepted for a device and what became of it.

    The command is stored as its fields and the report as the values it is made of;
    both are rebuilt exactly from the row.

    The primary key (twin_id, command_id) is the uniqueness that makes a command id
    take effect at most once per twin, whoever dispatches it and however often.
    """

    __tablename__ = "twin_effects"

    twin_id: str = Field(primary_key=True, foreign_key="twin_fleets.id", max_length=128)
    """Twin the command was dispatched to."""
    command_id: str = Field(primary_key=True, max_length=64)
    """Idempotency key of the command."""
    seq: int = Field(sa_type=BigInteger)
    """Dispatch order within the twin, from 0."""
    device_id: str = Field(max_length=128)
    """Device addressed."""
    plan_id: str = Field(sa_type=Text)
    """Plan the command belongs to."""
    wave: int
    """The command's own wave index (from 0)."""
    action: str = Field(max_length=16)
    """install, rollback or validate."""
    module: str = Field(max_length=64)
    """Module acted on."""
    version: str = Field(sa_type=Text)
    """Version the command names."""
    plan_hash: str = Field(sa_type=Text)
    """Hash of the approved plan revision the command carries."""
    digest: str = Field(max_length=80)
    """Digest of the artifact to install."""
    issued_us: int = Field(sa_type=BigInteger)
    """When the control plane issued the command, microseconds since the epoch."""
    deadline_us: int = Field(sa_type=BigInteger)
    """The command's deadline, microseconds since the epoch."""
    signature: str | None = Field(default=None, sa_type=Text)
    """The control plane's signature over the command, if any."""
    outcome: str = Field(max_length=16)
    """accepted (device reachable) or queued (device offline) at dispatch."""
    dispatched_ms: int = Field(sa_type=BigInteger)
    """Virtual time of the dispatch."""
    windows: str | None = Field(default=None, sa_type=Text)
    """The windows the command may start in, as JSON ``[[opens_us, closes_us], ...]``
    (None: any time before its deadline)."""
    phase: str = Field(max_length=16)
    """queued, running, held (done, report waiting for connectivity) or done."""
    started_ms: int | None = Field(default=None, sa_type=BigInteger)
    """When the device started the command."""
    due_ms: int | None = Field(default=None, sa_type=BigInteger)
    """When the command completes on the device."""
    completed_ms: int | None = Field(default=None, sa_type=BigInteger)
    """When it completed on the device."""
    reported_ms: int | None = Field(default=None, sa_type=BigInteger)
    """When the device's report went out."""
    status: str | None = Field(default=None, max_length=16)
    """applied, failed or expired."""
    version_before: str | None = Field(default=None, sa_type=Text)
    """Installed version of the module before the command took effect."""
    version_after: str | None = Field(default=None, sa_type=Text)
    """Installed version of the module after it."""
    health_ok: bool | None = None
    """Whether the device was healthy once the command completed."""
    health_score: float | None = None
    """The device's health score once the command completed."""
    installed: str | None = Field(default=None, sa_type=Text)
    """Modules installed when the report went out, as JSON."""
    note: str | None = Field(default=None, sa_type=Text)
    """The device's note when the report went out (untrusted text; None when empty)."""
    hlc_ms: int | None = Field(default=None, sa_type=BigInteger)
    """Wall part of the report's hybrid logical clock reading."""
    hlc_counter: int | None = None
    """Counter part of the report's hybrid logical clock reading."""


_NONE = repeat(None)

FLEETS: Table = SQLModel.metadata.tables["twin_fleets"]
DEVICES: Table = SQLModel.metadata.tables["twin_devices"]
FAULTS: Table = SQLModel.metadata.tables["twin_faults"]
EFFECTS: Table = SQLModel.metadata.tables["twin_effects"]
TWIN_TABLES = [FLEETS, DEVICES, FAULTS, EFFECTS]
"""The twin's tables, in the order they must be created."""


def init_twin_store(engine: Engine) -> None:
    """Create the twin's tables in ``engine``'s database when they are missing."""
    SQLModel.metadata.create_all(engine, tables=TWIN_TABLES)


def _statement_parts(conn: Connection, table: Table) -> tuple[str, Callable[[str], str], str]:
    """Return the quoted table name, the identifier quoter and the driver's placeholder."""
    preparer = conn.dialect.identifier_preparer
    style = conn.dialect.paramstyle
    if style == "qmark":
        mark = "?"
    elif style in ("format", "pyformat"):
        mark = "%s"
    else:
        raise StoreError(f"the twin writes through qmark or format drivers, not {style}")
    return preparer.format_table(table), preparer.quote, mark


def _copy_in(conn: Connection, name: str, names: str, rows: Sequence[Sequence[Any]]) -> None:
    """PostgreSQL: stream ``rows`` in with ``COPY``, in the connection's transaction.

    A driver error comes out as SQLAlchemy's, as from any other statement.
    """
    statement = f"COPY {name} ({names}) FROM STDIN"
    dbapi = conn.dialect.loaded_dbapi
    cursor: Any = conn.connection.cursor()
    try:
        with cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi.Error, dialect=conn.dialect) from exc


def bulk_insert(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` (values in ``columns`` order) in bulk, at the driver.

    The twin writes thousands of rows per call; going to the driver directly skips
    SQLAlchemy's per-row parameter processing, which costs more than the write.

    PostgreSQL gets the rows with ``COPY``: half the cost of a pipelined executemany.
    SQLite gets one executemany per shape of row, in which a None is not sent: the
    column is left out and takes its default, NULL (the twin's tables declare no
    other), since binding a NULL costs the sqlite3 driver four times an integer and a
    fresh ledger entry is half NULLs.
    """
    if not rows:
        return
    name, quote, mark = _statement_parts(conn, table)
    if conn.dialect.name == "postgresql":
        _copy_in(conn, name, ", ".join(quote(c) for c in columns), rows)
        return
    shapes: dict[tuple[bool, ...], list[Sequence[Any]]] = {}
    for row in rows:
        present = tuple(map(is_not, row, _NONE))
        shape = shapes.get(present)
        if shape is None:
            shape = shapes[present] = []
        shape.append(row if all(present) else tuple(compress(row, present)))
    for present, shaped in shapes.items():
        names = ", ".join(quote(c) for c in compress(columns, present))
        marks = ", ".join(mark for _ in compress(columns, present))
        conn.exec_driver_sql(f"INSERT INTO {name} ({names}) VALUES ({marks})", shaped)


def bulk_update(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    keys: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Update rows by key with one driver-level executemany.

    Each row holds the new values of ``columns`` followed by the values of ``keys``.
    (On PostgreSQL a pipelined executemany beat one ``UPDATE ... FROM unnest(...)``.)
    """
    if not rows:
        return
    name, quote, mark = _statement_parts(conn, table)
    sets = ", ".join(f"{quote(c)} = {mark}" for c in columns)
    where = " AND ".join(f"{quote(k)} = {mark}" for k in keys)
    conn.exec_driver_sql(f"UPDATE {name} SET {sets} WHERE {where}", list(rows))

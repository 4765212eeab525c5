"""The gateway's tables: the command ledger, device states and rejected input.

They have their own metadata, so that the gateway creates exactly these.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from sqlalchemy import BigInteger, Text, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from fieldgate.batches import chunks
from fieldgate.commands import DeviceCommand
from fieldgate.store._engine import is_sqlite

IN_LIST = 500
"""Ids per ``IN (...)`` list in the gateway's queries."""


class EdgeTable(SQLModel, registry=registry()):
    """Base of the gateway's tables; its own metadata lets the gateway create exactly these."""


class EdgeCommandRow(EdgeTable, table=True):
    """One command the gateway published, and the first report that answered it."""

    __tablename__ = "edge_commands"

    command_id: str = Field(primary_key=True, max_length=64)
    """Idempotency key."""
    device_id: str = Field(index=True, max_length=128)
    """Device addressed."""
    site: str = Field(max_length=64)
    """Its site (part of the topic)."""
    plan_id: str = Field(sa_type=Text)
    """Plan of the command."""
    wave: int
    """Wave index, from 0."""
    action: str = Field(max_length=16)
    """install, rollback or validate."""
    module: str = Field(max_length=64)
    """Module acted on."""
    version: str = Field(sa_type=Text)
    """Version named."""
    deadline_us: int = Field(sa_type=BigInteger)
    """The command's deadline, µs since the epoch."""
    command: str = Field(sa_type=Text)
    """The signed command as published (JSON)."""
    dispatched_us: int = Field(sa_type=BigInteger)
    """When it was first published."""
    status: str | None = Field(default=None, max_length=16)
    """Status of the report that answered it; None while outstanding."""
    report: str | None = Field(default=None, sa_type=Text)
    """That report (JSON)."""
    reported_us: int | None = Field(default=None, sa_type=BigInteger)
    """When that report was stored."""


class EdgeDeviceRow(EdgeTable, table=True):
    """The latest state a device reported, by its hybrid logical clock."""

    __tablename__ = "edge_devices"

    device_id: str = Field(primary_key=True, max_length=128)
    site: str = Field(max_length=64)
    online: bool
    """Whether its last hello or will said online."""
    seen_us: int = Field(sa_type=BigInteger)
    """When the gateway last heard from it."""
    hlc_wall: int = Field(sa_type=BigInteger)
    """Clock reading of the state below (-1: none yet)."""
    hlc_counter: int
    installed: str = Field(sa_type=Text)
    """Installed modules (JSON)."""
    health: str | None = Field(default=None, sa_type=Text)
    """Health (JSON)."""
    hello_signature: str | None = Field(default=None, sa_type=Text)
    """Signature of the last hello taken from the device."""


class EdgeRejectionRow(EdgeTable, table=True):
    """Input the gateway did not accept, or a device's refusal of input it received."""

    __tablename__ = "edge_rejections"

    id: int | None = Field(default=None, primary_key=True)
    at_us: int = Field(sa_type=BigInteger)
    topic: str = Field(sa_type=Text)
    device_id: str | None = Field(default=None, max_length=128)
    """Device named by the topic, if any."""
    source: str = Field(max_length=16)
    """``gateway`` (the gateway refused it) or ``device`` (the device refused a command)."""
    reason: str = Field(sa_type=Text)
    payload: str = Field(sa_type=Text)
    """The first KiB of the payload."""


COMMANDS = EdgeCommandRow.__table__  # type: ignore[attr-defined]
DEVICES = EdgeDeviceRow.__table__  # type: ignore[attr-defined]
REJECTIONS = EdgeRejectionRow.__table__  # type: ignore[attr-defined]


def upsert_devices(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or update ``edge_devices`` rows by device id."""
    if not rows:
        return
    dialect = sqlite if is_sqlite(conn) else postgresql
    statement = dialect.insert(DEVICES)
    statement = statement.on_conflict_do_update(
        index_elements=["device_id"],
        set_={c: statement.excluded[c] for c in rows[0] if c != "device_id"},
    )
    conn.execute(statement, rows)


def offline_devices(engine: Engine) -> set[str]:
    """Devices whose last hello or will said offline (none before a gateway ever ran)."""
    if not inspect(engine).has_table(DEVICES.name):
        return set()
    with engine.connect() as conn:
        rows = conn.execute(select(DEVICES.c.device_id).where(DEVICES.c.online.is_(False)))
        return {device_id for (device_id,) in rows}


def device_seen(engine: Engine, device_id: str) -> dict[str, Any] | None:
    """What the gateway last heard from a device: online, when (UTC, from its clock reading
    ``seen_us``) and its health; None when no gateway has heard from it."""
    if not inspect(engine).has_table(DEVICES.name):
        return None
    with engine.connect() as conn:
        row = conn.execute(select(DEVICES).where(DEVICES.c.device_id == device_id)).mappings()
        found = row.first()
    if found is None:
        return None
    health = json.loads(found["health"]) if found["health"] else None
    return {"online": bool(found["online"]), "seen_us": found["seen_us"], "health": health}


def unanswered_commands(engine: Engine, command_ids: Collection[str]) -> list[DeviceCommand]:
    """The commands among ``command_ids`` a gateway published that no report answered yet,
    as they were signed (none before a gateway ever ran)."""
    if not command_ids or not inspect(engine).has_table(COMMANDS.name):
        return []
    found = []
    with engine.connect() as conn:
        for chunk in chunks(sorted(command_ids), IN_LIST):
            rows = conn.execute(
                select(COMMANDS.c.command).where(
                    COMMANDS.c.command_id.in_(chunk), COMMANDS.c.status.is_(None)
                )
            )
            found += [DeviceCommand.model_validate_json(text) for (text,) in rows]
    return found

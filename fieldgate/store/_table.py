"""What every store table shares: its own metadata, UTC times and JSON text columns."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import DateTime, Table
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from fieldgate.contract import canonical_json


class StoreTable(SQLModel, registry=registry()):
    """Base of fieldgate's tables; its own metadata lets ``init`` create exactly these."""


def table_of(model: type[StoreTable]) -> Table:
    """Return the SQLAlchemy Core table behind a table model, for bulk statements."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Read a stored time as UTC (SQLite hands back naive datetimes)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_time_field() -> Any:
    """Declare a timestamp column holding UTC times (``timestamptz`` on PostgreSQL)."""
    return Field(sa_type=DateTime(timezone=True))


def json_text(value: Any) -> str:
    """Encode ``value`` as canonical JSON text for a text column."""
    return canonical_json(value).decode("utf-8")


def from_json_text(text: str) -> Any:
    """Decode a JSON text column."""
    return json.loads(text)

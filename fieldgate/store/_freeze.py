"""The change freeze: one switch in the store that every process reads.

While it is on, forward rollouts hold at their next executor step and the planning
gate denies new ones; rollbacks go on. Who may set or lift it is the operations
policy's call (``fieldgate freeze``); the store only keeps where it stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, col, select

from fieldgate.store._engine import for_writing, joined, read_rows
from fieldgate.store._table import StoreTable, as_utc, utc_now, utc_time_field

_SCOPE = "*"
"""The one freeze there is: for every plan."""


class FreezeRow(StoreTable, table=True):
    """Where the change freeze stands: on or off, who last set it and why."""

    __tablename__ = "change_freeze"

    scope: str = Field(primary_key=True)
    on: bool
    by: str
    reason: str
    at: datetime = utc_time_field()


@dataclass(frozen=True)
class Freeze:
    """The change freeze in force."""

    by: str
    """Who set it."""
    reason: str
    """Why (as they gave it)."""
    at: datetime
    """When it was set (UTC, wall clock)."""

    def describe(self) -> str:
        """``change freeze set by ops-max: storm season``."""
        return f"change freeze set by {self.by}: {self.reason}"


class FreezeStore:
    """The change freeze, as every process sees it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    def set(self, on: bool, by: str, reason: str, *, tx: Session | None = None) -> None:
        """Turn the freeze on or off (in the transaction ``tx`` when given)."""
        with joined(tx, self._writer, "setting the change freeze") as session:
            row = session.get(FreezeRow, _SCOPE) or FreezeRow(
                scope=_SCOPE, on=on, by=by, reason=reason, at=utc_now()
            )
            row.on, row.by, row.reason, row.at = on, by, reason, utc_now()
            session.add(row)

    def current(self) -> Freeze | None:
        """The freeze in force, or None when there is none (one plain read: the executor
        asks before every batch it dispatches)."""
        rows = read_rows(self._engine, _IN_FORCE, "reading the change freeze")
        if not rows:
            return None
        by, reason, at = rows[0]
        return Freeze(by, reason, as_utc(at))


_IN_FORCE = select(col(FreezeRow.by), col(FreezeRow.reason), col(FreezeRow.at)).where(
    col(FreezeRow.scope) == _SCOPE, col(FreezeRow.on)
)

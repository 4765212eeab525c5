"""Instants as whole milliseconds or microseconds since the Unix epoch, and back.

The stores keep instants as integers; these convert exactly (integer arithmetic on
``timedelta``, no float seconds in between), so that a value read back is the value
written. Instants must carry a time zone; those returned are in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_ONE_US = timedelta(microseconds=1)


def to_ms(at: datetime) -> int:
    """Return ``at`` as whole milliseconds since the epoch."""
    return (at - _EPOCH) // _ONE_MS


def at_ms(ms: int) -> datetime:
    """Return the UTC instant ``ms`` milliseconds after the epoch."""
    return _EPOCH + timedelta(milliseconds=ms)


def to_us(at: datetime) -> int:
    """Return ``at`` as whole microseconds since the epoch."""
    return (at - _EPOCH) // _ONE_US


def at_us(us: int) -> datetime:
    """Return the UTC instant ``us`` microseconds after the epoch."""
    return _EPOCH + timedelta(microseconds=us)


def now_us() -> int:
    """Return the wall clock as whole microseconds since the epoch."""
    return to_us(datetime.now(UTC))

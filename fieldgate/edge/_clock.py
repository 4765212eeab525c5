"""A hybrid logical clock: physical milliseconds plus a counter, never going backwards.

Readings order the events of one node even when its wall clock steps back (NTP,
a reboot with a wrong RTC), and a node that observes a remote reading stamps its
next event after it, so a report answering a command sorts after the command.
Kulkarni et al., "Logical Physical Clocks" (2014).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fieldgate.commands import HybridTimestamp


def wall_ms() -> int:
    """Milliseconds since the epoch by the wall clock."""
    return time.time_ns() // 1_000_000


class HybridClock:
    """The hybrid logical clock of one node; not thread-safe (one owner stamps events)."""

    def __init__(
        self,
        node: str,
        last: tuple[int, int] = (0, 0),
        *,
        physical: Callable[[], int] = wall_ms,
        max_drift_ms: int = 5 * 60_000,
    ) -> None:
        """Start the clock after ``last`` (a persisted ``(wall_ms, counter)``).

        Args:
            node: Who stamps (the device id).
            last: The latest reading this node ever gave, so that a restarted node
                continues after it whatever its wall clock says.
            physical: The wall clock in milliseconds (injected by tests).
            max_drift_ms: Remote readings further ahead of the wall clock than this are
                not adopted: one wrong clock elsewhere must not drag this one along.
        """
        self.node = node
        self._wall, self._counter = last
        self._physical = physical
        self._max_drift_ms = max_drift_ms

    @property
    def last(self) -> tuple[int, int]:
        """The latest reading as ``(wall_ms, counter)``, for persisting."""
        return (self._wall, self._counter)

    def now(self) -> HybridTimestamp:
        """Stamp a local or send event."""
        physical = self._physical()
        if physical > self._wall:
            self._wall, self._counter = physical, 0
        else:
            self._counter += 1
        return self._reading()

    def observe(self, wall: int, counter: int = 0) -> HybridTimestamp:
        """Stamp the receipt of a remote reading ``(wall, counter)``."""
        physical = self._physical()
        if wall > physical + self._max_drift_ms:
            return self.now()
        top = max(self._wall, wall, physical)
        if top == self._wall and top == wall:
            self._counter = max(self._counter, counter) + 1
        elif top == self._wall:
            self._counter += 1
        elif top == wall:
            self._counter = counter + 1
        else:
            self._counter = 0
        self._wall = top
        return self._reading()

    def _reading(self) -> HybridTimestamp:
        return HybridTimestamp(wall_ms=self._wall, counter=self._counter, node=self.node)

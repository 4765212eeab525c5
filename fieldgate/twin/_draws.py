"""Deterministic draws: every simulated outcome is a hash of the seed and what it is about.

Nothing here keeps a random state. A command's duration depends on the seed and
its command id only, so a restart, a different dispatch order or a different
batching of the same commands does not change what happens.
"""

from __future__ import annotations

from hashlib import blake2b

from fieldgate.commands import Action

DURATION_SECONDS: dict[Action, tuple[int, int]] = {
    Action.install: (120, 360),
    Action.rollback: (60, 180),
    Action.validate: (10, 30),
}
"""Range of simulated durations per action, in seconds (both ends included)."""

SLOW_FACTOR = 5
"""How many times longer a command takes on a device under a ``slow`` fault."""


def unit(seed: int, *parts: str) -> float:
    """Return a number in [0, 1) fixed by ``seed`` and ``parts``."""
    key = f"{seed}\x1f" + "\x1f".join(parts)
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def duration_ms(seed: int, command_id: str, action: Action, slow: bool) -> int:
    """Return how long ``command_id`` runs on its device, in whole seconds expressed in ms."""
    low, high = DURATION_SECONDS[action]
    seconds = low + int(unit(seed, "duration", command_id) * (high - low + 1))
    return seconds * 1000 * (SLOW_FACTOR if slow else 1)


def healthy_score(seed: int, command_id: str) -> float:
    """Return the score of a healthy device after ``command_id`` (0.95 to 1.0)."""
    return round(0.95 + 0.05 * unit(seed, "score", command_id), 3)


def degraded_score(seed: int, command_id: str) -> float:
    """Return the score of a device degraded by ``command_id`` (0.2 to 0.4)."""
    return round(0.2 + 0.2 * unit(seed, "score", command_id), 3)


def failed_score(seed: int, command_id: str) -> float:
    """Return the score of a device whose ``command_id`` install failed (0.05 to 0.2)."""
    return round(0.05 + 0.15 * unit(seed, "score", command_id), 3)


def fault_rank(seed: int, fault_seq: int, device_id: str) -> float:
    """Return the rank by which a wave fault picks its devices (lowest first)."""
    return unit(seed, "fault", str(fault_seq), device_id)

"""The simulated devices' own keys: each signs its reports as a field agent does.

A twin device's key is derived from the twin's seed and the device's id, so a reloaded
twin (a restarted worker) signs with the same keys without storing them, the same seed
gives the same history byte for byte, and the fleet store enrolls them when the twin's
world is built (:meth:`FleetTwin.public_keys`). Derived keys are simulation keys: anyone
who knows the seed can make them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from functools import lru_cache

from fieldgate.contract import canonical_json
from fieldgate.signing import SigningKey


@lru_cache(maxsize=1 << 18)
def device_key(seed: int, device_id: str) -> SigningKey:
    """The key of one simulated device (derived once per process, then remembered)."""
    return SigningKey.from_seed(device_id, f"fieldgate twin seed {seed}: {device_id}".encode())


class TwinKeys:
    """The keys of one twin's devices."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def public_keys(self, device_ids: Iterable[str]) -> dict[str, str]:
        """Each device's public key (base64), for enrollment."""
        return {d: device_key(self.seed, d).public_b64 for d in device_ids}

    def sign(self, device_id: str, payload: object) -> str:
        """The device's base64 signature over the canonical JSON of ``payload``."""
        key = device_key(self.seed, device_id)
        return base64.b64encode(key.private.sign(canonical_json(payload))).decode()

"""Ed25519 keys and signatures: artifacts, approvals and device commands are signed.

A key id is ``ed25519:`` and the first 16 hex digits of the sha256 of the raw
public key. Signatures and keys travel as base64 text.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fieldgate.contract import canonical_json


def key_id_of(public_key_b64: str) -> str:
    """Return the stable id of a base64 public key."""
    raw = base64.b64decode(public_key_b64)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A private ed25519 key and who holds it."""

    owner: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, owner: str) -> SigningKey:
        """Make a fresh random key for ``owner``."""
        return cls(owner, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, owner: str, seed: bytes) -> SigningKey:
        """Derive a deterministic key from a seed (demo and test keys only)."""
        return cls(owner, Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))

    @classmethod
    def from_private_b64(cls, owner: str, text: str) -> SigningKey:
        """Load a key saved with :meth:`private_b64`."""
        return cls(owner, Ed25519PrivateKey.from_private_bytes(base64.b64decode(text)))

    def private_b64(self) -> str:
        """Return the raw private key as base64 (keep it secret)."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        raw = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return base64.b64encode(raw).decode()

    @property
    def public_b64(self) -> str:
        """The raw public key as base64."""
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    @property
    def key_id(self) -> str:
        """The id of the public half."""
        return key_id_of(self.public_b64)

    def sign(self, payload: object) -> str:
        """Sign the canonical JSON of ``payload``; return the base64 signature."""
        return base64.b64encode(self.private.sign(canonical_json(payload))).decode()


def verify(public_key_b64: str, payload: object, signature_b64: str | None) -> bool:
    """Tell whether ``signature_b64`` signs the canonical JSON of ``payload``."""
    if not signature_b64:
        return False
    return _verifies(public_key_b64, canonical_json(payload), signature_b64)


@lru_cache(maxsize=4096)
def _verifies(public_key_b64: str, message: bytes, signature_b64: str) -> bool:
    """The ed25519 check itself, remembered: the same key, message and signature always give
    the same answer, and the gate checks the same artifact signature for every plan."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True

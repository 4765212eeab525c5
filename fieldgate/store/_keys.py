"""Trusted public keys: who may sign artifacts, approvals and device commands."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

import sqlalchemy
from sqlalchemy.engine import Engine
from sqlmodel import Field, col, select

from fieldgate.errors import NotFound, StoreError
from fieldgate.signing import key_id_of
from fieldgate.store._engine import for_writing, read_rows, transaction
from fieldgate.store._table import StoreTable, as_utc, utc_now, utc_time_field

KeyPurpose = Literal["artifact", "approver", "control-plane"]
"""What a key is trusted to sign: artifacts (factory), approvals, or device commands."""

PURPOSES: tuple[str, ...] = get_args(KeyPurpose)


@dataclass(frozen=True)
class TrustedKey:
    """A public key fieldgate trusts for one purpose."""

    key_id: str
    """``ed25519:`` and 16 hex digits of the key's sha256."""
    owner: str
    """Who holds the private half (a factory, a person, the control plane)."""
    purpose: KeyPurpose
    """artifact, approver or control-plane."""
    public_b64: str
    """The raw ed25519 public key, base64."""
    added_at: datetime
    """When the key was trusted (UTC)."""


class TrustedKeyRow(StoreTable, table=True):
    """One trusted key."""

    __tablename__ = "trusted_key"

    key_id: str = Field(primary_key=True)
    owner: str = Field(index=True)
    purpose: str
    public_b64: str
    added_at: datetime = utc_time_field()

    def to_key(self) -> TrustedKey:
        """Return the row as a :class:`TrustedKey`."""
        purpose: KeyPurpose = self.purpose  # type: ignore[assignment]
        return TrustedKey(self.key_id, self.owner, purpose, self.public_b64, as_utc(self.added_at))


_KEY_COLUMNS = (
    col(TrustedKeyRow.key_id),
    col(TrustedKeyRow.owner),
    col(TrustedKeyRow.purpose),
    col(TrustedKeyRow.public_b64),
    col(TrustedKeyRow.added_at),
)


_FOR_PURPOSE = (
    sqlalchemy.select(*_KEY_COLUMNS)
    .where(col(TrustedKeyRow.purpose) == sqlalchemy.bindparam("purpose"))
    .order_by(col(TrustedKeyRow.added_at), col(TrustedKeyRow.key_id))
)


def _check_public_key(public_b64: str) -> None:
    try:
        raw = base64.b64decode(public_b64, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise StoreError(f"{public_b64[:60]!r} is not an ed25519 public key (32 bytes, base64)")


class KeyStore:
    """The table of trusted public keys."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    def trust(self, owner: str, public_b64: str, purpose: KeyPurpose) -> TrustedKey:
        """Trust ``public_b64`` as ``owner``'s key for ``purpose``; trusting it again is a no-op.

        Raises:
            StoreError: the key is malformed, the purpose unknown, or the key is already
                trusted for another owner or purpose.
        """
        if purpose not in PURPOSES:
            raise StoreError(f"key purpose {purpose!r} is not one of {', '.join(PURPOSES)}")
        if not owner:
            raise StoreError("a trusted key needs an owner")
        _check_public_key(public_b64)
        key_id = key_id_of(public_b64)
        with transaction(self._writer, f"trusting key {key_id}") as session:
            row = session.get(TrustedKeyRow, key_id)
            if row is None:
                row = TrustedKeyRow(
                    key_id=key_id,
                    owner=owner,
                    purpose=purpose,
                    public_b64=public_b64,
                    added_at=utc_now(),
                )
                session.add(row)
            elif (row.owner, row.purpose) != (owner, purpose):
                raise StoreError(
                    f"key {key_id} is already trusted as {row.owner}'s {row.purpose} key; "
                    f"it cannot also be {owner}'s {purpose} key"
                )
            return row.to_key()

    def get(self, key_id: str) -> TrustedKey:
        """Return the trusted key with this id; raise :class:`NotFound` if there is none."""
        with transaction(self._engine, f"reading key {key_id}") as session:
            row = session.get(TrustedKeyRow, key_id)
            if row is None:
                raise NotFound(f"key {key_id} is not trusted")
            return row.to_key()

    def for_purpose(self, purpose: KeyPurpose) -> list[TrustedKey]:
        """Every key trusted for ``purpose``, oldest first."""
        rows = read_rows(self._engine, _FOR_PURPOSE, "reading trusted keys", {"purpose": purpose})
        return [
            TrustedKey(key_id, owner, purpose, public_b64, as_utc(added_at))
            for key_id, owner, _, public_b64, added_at in rows
        ]

    def for_owner(self, owner: str, purpose: KeyPurpose | None = None) -> list[TrustedKey]:
        """List the keys of ``owner`` (for ``purpose`` only, when given), oldest first."""
        query = select(TrustedKeyRow).where(TrustedKeyRow.owner == owner)
        if purpose is not None:
            query = query.where(TrustedKeyRow.purpose == purpose)
        with transaction(self._engine, f"reading the keys of {owner}") as session:
            query = query.order_by(col(TrustedKeyRow.added_at), col(TrustedKeyRow.key_id))
            return [row.to_key() for row in session.exec(query)]

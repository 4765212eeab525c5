"""Trusted public keys: who may sign artifacts, approvals and device commands.

Approver, control-plane and factory keys are stored with the root holders' signed enrollment
statement (see :mod:`fieldgate.trust`), the root of trust's versions and the signed
revocations next to them; whether a row counts is judged from those signatures every
time a key is used, never from the row alone.
"""

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
from fieldgate.signing import SigningKey, key_id_of
from fieldgate.store._engine import for_writing, read_rows, transaction
from fieldgate.store._table import StoreTable, as_utc, utc_now, utc_time_field
from fieldgate.trust import KeyStatement, KeyTrust, StoredKey, TrustRoot, judge_keys, resolve_root

KeyPurpose = Literal["approver", "control-plane", "factory"]
"""What a key is trusted to sign: approvals, device commands, or manifests and catalog
metadata (a factory's). Rows of the retired unsigned ``artifact`` purpose count for nothing."""

PURPOSES: tuple[str, ...] = get_args(KeyPurpose)


@dataclass(frozen=True)
class TrustedKey:
    """A public key fieldgate trusts for one purpose."""

    key_id: str
    """``ed25519:`` and 16 hex digits of the key's sha256."""
    owner: str
    """Who holds the private half (a factory, a person, the control plane)."""
    purpose: KeyPurpose
    """approver, control-plane or factory."""
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
    statement_json: str = ""
    """The signed enrollment statement (JSON)."""

    def stored(self) -> StoredKey:
        """The row with its statement, for judging (a garbled statement reads as none)."""
        statement = None
        if self.statement_json:
            try:
                statement = KeyStatement.model_validate_json(self.statement_json)
            except ValueError:
                statement = None
        return StoredKey(self.key_id, self.owner, self.purpose, self.public_b64, statement)

    def to_key(self) -> TrustedKey:
        """Return the row as a :class:`TrustedKey`."""
        purpose: KeyPurpose = self.purpose  # type: ignore[assignment]
        return TrustedKey(self.key_id, self.owner, purpose, self.public_b64, as_utc(self.added_at))


class TrustRootRow(StoreTable, table=True):
    """One version of the root of trust, as signed."""

    __tablename__ = "trust_root"

    version: int = Field(primary_key=True)
    root_json: str


class KeyRevocationRow(StoreTable, table=True):
    """A signed revocation of a key."""

    __tablename__ = "key_revocation"

    id: int | None = Field(default=None, primary_key=True)
    key_id: str = Field(index=True)
    statement_json: str


ENROLLED: tuple[str, ...] = ("approver", "control-plane", "factory")
"""The purposes whose keys are trusted only through a root-signed enrollment."""


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

    def enroll(self, statement: KeyStatement) -> KeyStatement:
        """Store an enrollment, or add the signatures of a co-signer to the stored one.

        Returns the statement as stored, with every signature it carries so far.

        Raises:
            StoreError: the key is malformed, or already stored as another owner's or
                purpose's key, or under another statement.
        """
        if statement.action != "enroll":
            raise StoreError("an enrollment statement must have action enroll")
        _check_public_key(statement.public_b64)
        with transaction(self._writer, f"enrolling key {statement.key_id}") as session:
            row = session.get(TrustedKeyRow, statement.key_id)
            if row is None:
                session.add(
                    TrustedKeyRow(
                        key_id=statement.key_id,
                        owner=statement.owner,
                        purpose=statement.purpose,
                        public_b64=statement.public_b64,
                        added_at=utc_now(),
                        statement_json=statement.model_dump_json(),
                    )
                )
                return statement
            stored = row.stored().statement
            if stored is None and (row.owner, row.purpose, row.public_b64) == (
                statement.owner,
                statement.purpose,
                statement.public_b64,
            ):
                # A key stored before it was enrolled (the control plane's, made on first use).
                row.statement_json = statement.model_dump_json()
                session.add(row)
                return statement
            if stored is None or stored.digest != statement.digest:
                raise StoreError(
                    f"key {statement.key_id} is already stored as {row.owner}'s {row.purpose} "
                    "key under another statement"
                )
            signatures = {s.key_id: s for s in (*stored.signatures, *statement.signatures)}
            merged = stored.model_copy(update={"signatures": tuple(signatures.values())})
            row.statement_json = merged.model_dump_json()
            session.add(row)
            return merged

    def statement(self, key_id: str) -> KeyStatement | None:
        """The enrollment stored with key ``key_id`` (for a co-signer to sign), if any."""
        with transaction(self._engine, f"reading key {key_id}") as session:
            row = session.get(TrustedKeyRow, key_id)
            return row.stored().statement if row is not None else None

    def revoke(self, statement: KeyStatement) -> None:
        """Store a signed revocation."""
        if statement.action != "revoke":
            raise StoreError("a revocation statement must have action revoke")
        with transaction(self._writer, f"revoking key {statement.key_id}") as session:
            session.add(
                KeyRevocationRow(
                    key_id=statement.key_id, statement_json=statement.model_dump_json()
                )
            )

    def add_root(self, root: TrustRoot) -> None:
        """Store one version of the root of trust (a version already stored stays)."""
        with transaction(self._writer, f"storing root version {root.version}") as session:
            if session.get(TrustRootRow, root.version) is None:
                session.add(TrustRootRow(version=root.version, root_json=root.model_dump_json()))

    def cosign_root(self, root: TrustRoot) -> TrustRoot:
        """Add ``root``'s signatures to the stored version with the same content; return it.

        Raises:
            StoreError: no version with that number and content is stored.
        """
        with transaction(self._writer, f"signing root version {root.version}") as session:
            row = session.get(TrustRootRow, root.version)
            stored = TrustRoot.model_validate_json(row.root_json) if row is not None else None
            if row is None or stored is None or stored.digest != root.digest:
                raise StoreError(f"root version {root.version} is not stored with this content")
            signatures = {s.key_id: s for s in (*stored.signatures, *root.signatures)}
            merged = stored.model_copy(update={"signatures": tuple(signatures.values())})
            row.root_json = merged.model_dump_json()
            session.add(row)
            return merged

    def roots(self) -> list[TrustRoot]:
        """Every stored root version that parses, oldest first."""
        with transaction(self._engine, "reading the root of trust") as session:
            rows = session.exec(select(TrustRootRow).order_by(col(TrustRootRow.version))).all()
            texts = [row.root_json for row in rows]
        roots = []
        for text in texts:
            try:
                roots.append(TrustRoot.model_validate_json(text))
            except ValueError:
                continue
        return roots

    def judge(self, pinned: TrustRoot | None) -> KeyTrust:
        """Every approver, control-plane and factory key judged under the root that follows from the
        pinned one (see :func:`fieldgate.trust.judge_keys`)."""
        with transaction(self._engine, "reading enrolled keys") as session:
            query = select(TrustedKeyRow).where(col(TrustedKeyRow.purpose).in_(ENROLLED))
            rows = [row.stored() for row in session.exec(query.order_by(col(TrustedKeyRow.key_id)))]
            texts = [r.statement_json for r in session.exec(select(KeyRevocationRow))]
        revocations = []
        for text in texts:
            try:
                revocations.append(KeyStatement.model_validate_json(text))
            except ValueError:
                continue
        if pinned is None:
            return judge_keys(None, rows, revocations)
        root, problems = resolve_root(pinned, self.roots())
        return judge_keys(root, rows, revocations, problems)

    def resign(self, old_key_id: str, new: SigningKey) -> int:
        """Sign again with ``new`` every enrollment that ``old_key_id`` signed (a root key
        rotation); return how many."""
        count = 0
        with transaction(self._writer, "signing enrollments with a rotated root key") as session:
            for row in session.exec(select(TrustedKeyRow)).all():
                statement = row.stored().statement
                if statement is None or all(s.key_id != old_key_id for s in statement.signatures):
                    continue
                row.statement_json = statement.signed_with(new).model_dump_json()
                session.add(row)
                count += 1
        return count

"""The deployment's root of trust, and the signed statements that make a key trusted.

``fieldgate init`` makes the root: one or more root keys and a threshold, k of n,
written as signed root metadata (:class:`TrustRoot`) both to the store and to
``FIELDGATE_HOME/trust-root.json``, the pin that every command starts from. A
person's or the control plane's key is trusted only through a :class:`KeyStatement`
(enroll or revoke) signed by k root keys, none of them held by the key's owner:
nobody enrolls their own key. Rotating the root is a new root version signed by k
keys of the version before it and by k keys of its own, as TUF rotates its root.

Statements are verified every time a key is used (:func:`resolve_keys`): a stored
key whose statement does not verify, whose row was edited, or that an unsigned row
shadows, makes its owner's keys count for nothing, and the problem is named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Self

from pydantic import Field

from fieldgate.contract import Contract, canonical_json, sha256_hex
from fieldgate.signing import SigningKey, key_id_of, verify

StatementAction = Literal["enroll", "revoke"]
"""What a key statement does."""

EnrolledPurpose = Literal["approver", "control-plane", "factory"]
"""The keys the root of trust vouches for: people's approver keys, the control plane's, and
the factories' (which sign manifests and the catalog's TUF metadata)."""


class KeySignature(Contract):
    """One root key's signature over a statement or a root version."""

    key_id: str
    """The root key that signed."""
    signature: str
    """Base64 ed25519 signature over the statement's payload."""


class RootKey(Contract):
    """A root key and its holder."""

    key_id: str
    """``ed25519:`` and 16 hex digits."""
    holder: str = Field(min_length=1)
    """The person who keeps the private half, in their own FIELDGATE_HOME."""
    public_b64: str
    """The raw public key, base64."""


class _Signed(Contract):
    """A payload signed by several keys (signatures travel apart from what they sign)."""

    signatures: tuple[KeySignature, ...] = ()
    """Who signed, in the order they signed."""

    def payload(self) -> dict[str, object]:
        """What every signature covers: all fields but the signatures."""
        return self.model_dump(mode="json", exclude={"signatures"})

    @property
    def digest(self) -> str:
        """sha256 of the payload's canonical JSON: the statement's id."""
        return sha256_hex(canonical_json(self.payload()))

    def signed_with(self, key: SigningKey) -> Self:
        """This record with ``key``'s signature added (a second signature by it replaces the
        first)."""
        kept = tuple(s for s in self.signatures if s.key_id != key.key_id)
        added = KeySignature(key_id=key.key_id, signature=key.sign(self.payload()))
        return self.model_copy(update={"signatures": (*kept, added)})

    def signers(self, keys: Iterable[RootKey]) -> tuple[set[str], list[str]]:
        """The ids of the ``keys`` whose signature verifies, and what is wrong with the others.

        Signatures by keys that are not among ``keys`` are passed over: they neither count
        nor spoil the record (a root key since rotated out signed it, say).
        """
        by_id = {k.key_id: k for k in keys}
        good: set[str] = set()
        bad: list[str] = []
        for signature in self.signatures:
            key = by_id.get(signature.key_id)
            if key is None:
                continue  # a key rotated out, or no root key at all: it adds nothing
            if not verify(key.public_b64, self.payload(), signature.signature):
                bad.append(f"the signature of {key.holder}'s root key {key.key_id} does not verify")
            else:
                good.add(key.key_id)
        return good, bad


class TrustRoot(_Signed):
    """One version of the root of trust: its keys and how many must sign."""

    version: int = Field(ge=1)
    """1 at ``fieldgate init``; each rotation adds one."""
    threshold: int = Field(ge=1)
    """How many root keys must sign a key statement or the next root version (k of n)."""
    keys: tuple[RootKey, ...] = Field(min_length=1)
    """The root keys (n)."""
    at: datetime
    """When this version was made."""

    def key(self, key_id: str) -> RootKey | None:
        """The root key with this id, if it is one."""
        return next((k for k in self.keys if k.key_id == key_id), None)

    def holder_key(self, holder: str) -> RootKey | None:
        """The root key ``holder`` keeps, if any."""
        return next((k for k in self.keys if k.holder == holder), None)

    def problems(self) -> list[str]:
        """What keeps this version from standing on its own (its own k signatures)."""
        problems = [
            f"root key {k.key_id} of {k.holder} is not the id of its public key"
            for k in self.keys
            if key_id_of(k.public_b64) != k.key_id
        ]
        if self.threshold > len(self.keys):
            problems.append(f"threshold {self.threshold} is more than its {len(self.keys)} keys")
        good, bad = self.signers(self.keys)
        problems += bad
        if len(good) < self.threshold:
            problems.append(
                f"root version {self.version} carries {len(good)} valid signature(s) of its own "
                f"keys; it needs {self.threshold}"
            )
        return problems

    def successor_problems(self, successor: TrustRoot) -> list[str]:
        """What keeps ``successor`` from replacing this version."""
        if successor.version != self.version + 1:
            return [f"root version {successor.version} does not follow version {self.version}"]
        problems = successor.problems()
        good, _ = successor.signers(self.keys)
        if len(good) < self.threshold:
            problems.append(
                f"root version {successor.version} carries {len(good)} valid signature(s) of "
                f"version {self.version}'s keys; it needs {self.threshold}"
            )
        return problems


class KeyStatement(_Signed):
    """Root holders' signed word that a key is (or is no longer) someone's key."""

    action: StatementAction
    """enroll or revoke."""
    owner: str = Field(min_length=1)
    """Whose key."""
    purpose: EnrolledPurpose
    """What the key signs: approvals (and edits), the control plane's commands and
    checkpoints, or a factory's manifests and catalog metadata."""
    key_id: str
    """The key's id."""
    public_b64: str
    """The key's public half, base64."""
    at: datetime
    """When the first root holder signed."""
    reason: str = ""
    """Why (for revocations)."""

    def problems(self, root: TrustRoot) -> tuple[list[str], bool]:
        """What is wrong with this statement under ``root``, and whether it only lacks
        signatures (a k-of-n statement still being signed: pending, not forged)."""
        problems: list[str] = []
        if key_id_of(self.public_b64) != self.key_id:
            problems.append(f"key id {self.key_id} is not the id of the public key it names")
        good, bad = self.signers(root.keys)
        problems += bad
        own = sorted(k.holder for k in root.keys if k.key_id in good and k.holder == self.owner)
        if own:
            problems.append(f"{self.owner} signed the statement of their own key")
        if not good:
            problems.append(f"no key of root version {root.version} signed it")
        if problems:
            return problems, False
        if len(good) < root.threshold:
            return [f"{len(good)} of the {root.threshold} root signatures it needs"], True
        return [], False


def resolve_root(pinned: TrustRoot, stored: Sequence[TrustRoot]) -> tuple[TrustRoot, list[str]]:
    """The newest root version that follows from the pinned one, and what was refused.

    Versions up to the pinned one are taken from the pin; each later stored version must be
    signed by the version before it (the first one that is not stops the walk).
    """
    problems = [f"the pinned root: {p}" for p in pinned.problems()]
    current = pinned
    for candidate in sorted(stored, key=lambda r: r.version):
        if candidate.version < pinned.version:
            continue
        if candidate.version == pinned.version:
            if candidate.digest != pinned.digest:
                problems.append(
                    f"the stored root version {candidate.version} is not the pinned one"
                )
            continue
        wrong = current.successor_problems(candidate)
        if wrong:
            problems += [f"root version {candidate.version}: {p}" for p in wrong]
            break
        current = candidate
    return current, problems


@dataclass(frozen=True)
class StoredKey:
    """A key row as stored, with the statement that enrolled it (if any)."""

    key_id: str
    """The row's key id."""
    owner: str
    """The row's owner."""
    purpose: str
    """The row's purpose."""
    public_b64: str
    """The row's public key."""
    statement: KeyStatement | None
    """The enrollment statement stored with the row."""


KeyStatus = Literal["trusted", "replaced", "pending", "revoked", "bad", "untrusted"]
"""Whether a stored key counts (see :class:`KeyVerdict`)."""


@dataclass(frozen=True)
class KeyVerdict:
    """Whether one stored key is trusted, and if not, why."""

    key: StoredKey
    """The row."""
    status: KeyStatus
    """trusted (the owner's current key), replaced (by a newer trusted key), pending (a
    k-of-n enrollment still lacking signatures), revoked, bad (its statement does not verify
    or the row was edited), untrusted (an owner with a bad row: none of their keys counts)."""
    reason: str = ""
    """Why it is not trusted."""


@dataclass(frozen=True)
class KeyTrust:
    """Every stored key of the enrolled purposes, judged under one root."""

    root: TrustRoot | None
    """The root they were judged under (None: no root of trust is pinned)."""
    verdicts: list[KeyVerdict] = field(default_factory=list)
    """One per stored row."""
    root_problems: list[str] = field(default_factory=list)
    """What was refused on the way from the pinned root to the current one."""

    def current(self, owner: str, purpose: EnrolledPurpose) -> StoredKey | None:
        """The owner's trusted key for ``purpose`` (None when they have none, or a bad row)."""
        for verdict in self.verdicts:
            key = verdict.key
            if (key.owner, key.purpose, verdict.status) == (owner, purpose, "trusted"):
                return key
        return None

    def why_not(self, owner: str, purpose: EnrolledPurpose) -> str:
        """Why ``owner`` has no trusted key for ``purpose``."""
        if self.root is None:
            return "no root of trust is pinned (FIELDGATE_HOME/trust-root.json; see `init`)"
        reasons = [
            f"key {v.key.key_id}: {v.reason}"
            for v in self.verdicts
            if (v.key.owner, v.key.purpose) == (owner, purpose) and v.reason
        ]
        return "; ".join(reasons) or f"{owner} has no enrolled {purpose} key"

    def public_keys(self, purpose: EnrolledPurpose) -> dict[str, str]:
        """Every owner's trusted public key for ``purpose``."""
        return {
            v.key.owner: v.key.public_b64
            for v in self.verdicts
            if v.key.purpose == purpose and v.status == "trusted"
        }

    def trusted_keys(self, purpose: EnrolledPurpose) -> dict[str, StoredKey]:
        """Every trusted key for ``purpose`` by key id (what a factory signature is checked
        against)."""
        return {
            v.key.key_id: v.key
            for v in self.verdicts
            if v.key.purpose == purpose and v.status == "trusted"
        }


def judge_keys(
    root: TrustRoot | None,
    rows: Sequence[StoredKey],
    revocations: Sequence[KeyStatement],
    root_problems: Sequence[str] = (),
) -> KeyTrust:
    """Judge every stored key under ``root`` (see :class:`KeyVerdict`).

    A row counts only when its statement enrolls exactly the row's owner, purpose and key
    and verifies under the root; the newest such row of an owner and purpose is their
    key, unless revoked. One bad row (forged, edited, unsigned) of an owner makes all of
    that owner's keys of the purpose untrusted: a shadowing row is an attack, and the
    safe reading of an attack is that nothing of theirs counts.
    """
    if root is None:
        verdicts = [KeyVerdict(r, "untrusted", "no root of trust is pinned") for r in rows]
        return KeyTrust(None, verdicts, list(root_problems))
    revoked: dict[str, str] = {}
    for revocation in revocations:
        problems, _ = revocation.problems(root)
        if not problems and revocation.action == "revoke":
            revoked[revocation.key_id] = revocation.reason or "revoked"
    judged: list[tuple[StoredKey, KeyStatus, str]] = []
    for row in rows:
        statement = row.statement
        if statement is None:
            judged.append((row, "bad", "it is not enrolled: no root holder signed it"))
            continue
        named = (statement.owner, statement.purpose, statement.key_id, statement.public_b64)
        if statement.action != "enroll" or named != (
            row.owner,
            row.purpose,
            row.key_id,
            row.public_b64,
        ):
            judged.append((row, "bad", "the row does not match its signed enrollment (edited)"))
            continue
        problems, pending = statement.problems(root)
        if problems:
            judged.append((row, "pending" if pending else "bad", "; ".join(problems)))
        elif row.key_id in revoked:
            judged.append((row, "revoked", f"revoked: {revoked[row.key_id]}"))
        else:
            judged.append((row, "trusted", ""))
    poisoned = {(r.owner, r.purpose) for r, status, _ in judged if status == "bad"}
    newest: dict[tuple[str, str], StoredKey] = {}
    for row, status, _ in judged:
        if status != "trusted" or row.statement is None:
            continue
        held = newest.get((row.owner, row.purpose))
        if held is None or (held.statement is not None and held.statement.at < row.statement.at):
            newest[(row.owner, row.purpose)] = row
    verdicts = []
    for row, status, reason in judged:
        owner_purpose = (row.owner, row.purpose)
        if status == "trusted" and owner_purpose in poisoned:
            status, reason = "untrusted", f"another {row.purpose} key row of {row.owner} is bad"
        elif status == "trusted" and newest.get(owner_purpose) is not row:
            status, reason = "replaced", "a newer enrolled key replaced it"
        verdicts.append(KeyVerdict(row, status, reason))
    return KeyTrust(root, verdicts, list(root_problems))


def new_root(holders: dict[str, SigningKey], threshold: int, at: datetime) -> TrustRoot:
    """Root version 1 over the holders' keys, signed by every one of them."""
    root = TrustRoot(
        version=1,
        threshold=threshold,
        keys=tuple(
            RootKey(key_id=key.key_id, holder=holder, public_b64=key.public_b64)
            for holder, key in sorted(holders.items())
        ),
        at=at,
    )
    for key in holders.values():
        root = root.signed_with(key)
    return root


def enrollment(owner: str, purpose: EnrolledPurpose, public_b64: str, at: datetime) -> KeyStatement:
    """An unsigned enrollment statement of ``public_b64`` as ``owner``'s ``purpose`` key."""
    return KeyStatement(
        action="enroll",
        owner=owner,
        purpose=purpose,
        key_id=key_id_of(public_b64),
        public_b64=public_b64,
        at=at,
    )

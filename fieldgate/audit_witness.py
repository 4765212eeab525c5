"""Anchor the audit log: signed checkpoints of its head, kept by a witness outside the database.

A hash chain alone shows only that rows agree with each other: whoever can write the
database can cut events from the end and move the head, or edit an event and re-chain
everything after it, and the chain still verifies. A checkpoint is the control
plane's signature over the head (log id, sequence number, head hash, time, id), like
a transparency log's signed tree head. Each goes to the store and, as one JSON line,
to an append-only witness file outside the database (``FIELDGATE_AUDIT_WITNESS``,
default ``FIELDGATE_HOME/audit-witness.jsonl``). :func:`verify_anchored` checks the
chain against the latest witnessed checkpoint: the database can no longer be made to
say less, or something else, than what was witnessed.

A checkpoint is written at the end of every run, every N events and on demand; it is
refused when the chain no longer extends the last witnessed checkpoint, so tampering
is never signed over.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from pydantic import Field, ValidationError

from fieldgate.audit import GENESIS_HASH, AuditCheckpoint
from fieldgate.config import DEFAULT_CHECKPOINT_EVERY, Config
from fieldgate.contract import canonical_json, problems_of
from fieldgate.errors import AuditBroken, WitnessInvalid
from fieldgate.keyfiles import control_plane_key
from fieldgate.signing import SigningKey, verify
from fieldgate.store import Store, VerifyResult
from fieldgate.store._checkpoints import rewritten
from fieldgate.trust import TrustRoot


class WitnessLine(AuditCheckpoint):
    """One line of the witness file: a checkpoint and the database it was taken of."""

    database: str = Field(default="")
    """The database URL (password hidden) the log was in when it was witnessed."""


@dataclass(frozen=True)
class WitnessEntry:
    """A checkpoint read from the witness file, with where it was read."""

    line: int
    """Line number in the witness file, from 1."""
    checkpoint: AuditCheckpoint
    """The signed checkpoint."""
    database: str
    """The database it was taken of."""


def read_witness(path: Path) -> list[WitnessEntry]:
    """Every checkpoint in the witness file at ``path``, in file order (none if it is absent).

    Raises:
        WitnessInvalid: the file cannot be read or a line is not a checkpoint, named
            with its line number.
    """
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WitnessInvalid(str(path), [("", f"cannot be read ({exc})")]) from None
    return _parse(path, text)


def _parse(path: Path, text: str) -> list[WitnessEntry]:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"line {number}"
        try:
            data = json.loads(raw)
        except ValueError as exc:
            problem = f"not JSON ({getattr(exc, 'msg', exc)}, column {getattr(exc, 'colno', 1)})"
            raise WitnessInvalid(str(path), [(where, problem)]) from None
        try:
            line = WitnessLine.model_validate(data)
        except ValidationError as exc:
            rules = "; ".join(f"{at}: {rule}" if at else rule for at, rule in problems_of(exc))
            raise WitnessInvalid(str(path), [(where, f"not a checkpoint ({rules})")]) from None
        checkpoint = AuditCheckpoint.model_validate(line.model_dump(exclude={"database"}))
        entries.append(WitnessEntry(number, checkpoint, line.database))
    return entries


@contextmanager
def _locked(path: Path) -> Iterator[TextIO]:
    """Open the witness for appending, holding its lock: checkpointers queue up in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fp = path.open("a+", encoding="utf-8")
    except OSError as exc:
        raise WitnessInvalid(str(path), [("", f"cannot be opened for appending ({exc})")]) from None
    with fp:
        fcntl.flock(fp, fcntl.LOCK_EX)
        try:
            yield fp
        finally:
            fcntl.flock(fp, fcntl.LOCK_UN)


def _database_of(store: Store) -> str:
    return store.engine.url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class AuditWitness:
    """Makes signed checkpoints of one store's audit log and hands them to the witness file."""

    path: Path
    """The witness file (JSON lines, append-only)."""
    key: SigningKey
    """The control plane's key, which signs every checkpoint."""
    every: int = DEFAULT_CHECKPOINT_EVERY
    """Events between two checkpoints (see :meth:`watch`)."""

    @classmethod
    def from_config(cls, config: Config, store: Store) -> AuditWitness:
        """The witness ``config`` names, signing with this machine's control-plane key."""
        key = control_plane_key(store, config.keys_dir)
        return cls(config.witness_path, key, config.audit_checkpoint_every)

    def watch(self, store: Store) -> None:
        """Checkpoint ``store``'s log every :attr:`every` events appended to it."""
        store.audit.watch(self.every, lambda: self.checkpoint(store))

    def checkpoint(self, store: Store) -> AuditCheckpoint:
        """Sign the chain's head, keep the checkpoint in the store and append it to the witness.

        Raises:
            AuditBroken: the chain no longer extends the last witnessed checkpoint
                (nothing is signed).
            WitnessInvalid: the witness file cannot be read or written.
        """
        log_id = store.checkpoints.log_id()
        with _locked(self.path) as fp:
            fp.seek(0)
            ours = [e for e in _parse(self.path, fp.read()) if e.checkpoint.log_id == log_id]
            last = ours[-1].checkpoint if ours else None
            seq, head_hash = (
                store.checkpoints.extend(last.seq, last.head_hash)
                if last
                else store.checkpoints.extend(0, GENESIS_HASH)
            )
            unsigned = AuditCheckpoint(
                checkpoint_id=f"ckpt-{uuid.uuid4().hex}",
                log_id=log_id,
                seq=seq,
                head_hash=head_hash,
                at=datetime.now(UTC),
                key_id=self.key.key_id,
            )
            checkpoint = unsigned.model_copy(
                update={"signature": self.key.sign(unsigned.signed_body())}
            )
            store.checkpoints.add(checkpoint)
            line = WitnessLine(**checkpoint.model_dump(), database=_database_of(store))
            try:
                fp.write(canonical_json(line.model_dump(mode="json")).decode("utf-8") + "\n")
                fp.flush()
                os.fsync(fp.fileno())
            except OSError as exc:
                problem = f"cannot be appended to ({exc})"
                raise WitnessInvalid(str(self.path), [("", problem)]) from None
        return checkpoint


@dataclass(frozen=True)
class AnchorResult:
    """What checking the chain against the witness found."""

    ok: bool
    """Whether the chain verifies and agrees with every witnessed and stored checkpoint."""
    reason: str
    """What is wrong, or a one-line confirmation."""
    chain: VerifyResult
    """What walking the chain itself found."""
    latest: AuditCheckpoint | None = None
    """The latest witnessed checkpoint of this log, if any."""


def _signed(checkpoint: AuditCheckpoint, keys: dict[str, str]) -> str | None:
    """Why ``checkpoint``'s signature does not verify, or None when it does."""
    public = keys.get(checkpoint.key_id)
    if public is None:
        return f"is signed by key {checkpoint.key_id}, which is not a trusted control-plane key"
    if not verify(public, checkpoint.signed_body(), checkpoint.signature):
        return f"has a signature that does not verify against key {checkpoint.key_id}"
    return None


def checkpoint_keys(store: Store, root: TrustRoot | None) -> dict[str, str]:
    """The control-plane keys a checkpoint may be signed with, by key id.

    Under a root of trust, only keys its holders enrolled (the current one and those it
    replaced, which signed the older checkpoints); revoked and bad rows do not count.
    Without one, every stored control-plane key (a database made before roots existed).
    """
    if root is None:
        return {k.key_id: k.public_b64 for k in store.keys.for_purpose("control-plane")}
    trust = store.keys.judge(root)
    return {
        v.key.key_id: v.key.public_b64
        for v in trust.verdicts
        if v.key.purpose == "control-plane" and v.status in ("trusted", "replaced")
    }


def verify_anchored(store: Store, witness: Path, root: TrustRoot | None = None) -> AnchorResult:
    """Walk the chain, then check it against the witness at ``witness`` and the stored checkpoints.

    Names truncation (events after the last one kept are missing), rewriting (the
    chain no longer holds a witnessed head hash), checkpoints whose signature does not
    verify with an enrolled control-plane key (see :func:`checkpoint_keys`; ``root`` is
    the pinned root of trust) and a witness whose head moved backwards.

    Raises:
        WitnessInvalid: the witness cannot be read, a line is not a checkpoint, or it is
            missing while the store holds checkpoints.
    """
    chain = store.audit.verify()
    if not chain.ok:
        return AnchorResult(False, chain.reason, chain)
    count = chain.count
    log_id = store.checkpoints.log_id()
    try:
        stored = store.checkpoints.stored()
    except AuditBroken as exc:
        return AnchorResult(False, exc.reason, chain)
    entries = read_witness(witness)
    if not entries and stored and not witness.exists():
        problem = (
            f"no witness file here, but the database holds {len(stored)} checkpoints (the "
            f"latest at sequence {stored[-1].seq}); point FIELDGATE_AUDIT_WITNESS or "
            "--witness at its witness"
        )
        raise WitnessInvalid(str(witness), [("", problem)])
    keys = checkpoint_keys(store, root)
    ours = [e for e in entries if e.checkpoint.log_id == log_id]
    database = _database_of(store)
    if not ours:
        other = next((e for e in entries if e.database == database), None)
        if other is not None:
            return AnchorResult(
                False,
                f"the log was replaced: witness line {other.line} records log "
                f"{other.checkpoint.log_id} for this database, which now holds log {log_id} "
                "(if it was recreated on purpose, start a new witness file)",
                chain,
            )
    previous: WitnessEntry | None = None
    for entry in ours:
        ckpt = entry.checkpoint
        why = _signed(ckpt, keys)
        if why is not None:
            reason = f"checkpoint signature mismatch at {ckpt.seq}: witness line {entry.line} {why}"
            return AnchorResult(False, reason, chain)
        if previous is not None:
            before = previous.checkpoint
            if ckpt.seq < before.seq:
                reason = (
                    f"head moved backwards: witness line {entry.line} records sequence "
                    f"{ckpt.seq} after line {previous.line} recorded sequence {before.seq}"
                )
                return AnchorResult(False, reason, chain)
            if ckpt.seq == before.seq and ckpt.head_hash != before.head_hash:
                reason = (
                    f"checkpoint hash mismatch at {ckpt.seq}: witness lines {previous.line} "
                    f"and {entry.line} record different head hashes for it"
                )
                return AnchorResult(False, reason, chain)
        previous = entry
    latest = ours[-1].checkpoint if ours else None
    # The latest witnessed head pins every event up to it: the chain links them all.
    checked = ([latest] if latest else []) + [c for c in stored if c.log_id == log_id]
    hashes = store.checkpoints.event_hashes(c.seq for c in checked if 0 < c.seq <= count)
    for ckpt in stored:
        where = f"the stored checkpoint {ckpt.checkpoint_id}"
        if ckpt.log_id != log_id:
            reason = f"checkpoint signature mismatch at {ckpt.seq}: {where} names another log"
            return AnchorResult(False, reason, chain, latest)
        why = _signed(ckpt, keys)
        if why is not None:
            reason = f"checkpoint signature mismatch at {ckpt.seq}: {where} {why}"
            return AnchorResult(False, reason, chain, latest)
    pinned = [(latest, "witnessed")] if latest else []
    for ckpt, source in pinned + [(c, "stored") for c in stored]:
        if ckpt.seq > count:
            reason = (
                f"events after sequence {count} are missing: the {source} checkpoint "
                f"{ckpt.checkpoint_id} covers the log up to sequence {ckpt.seq}"
            )
            return AnchorResult(False, reason, chain, latest)
        held = hashes.get(ckpt.seq, GENESIS_HASH)
        if held != ckpt.head_hash:
            reason = rewritten(ckpt.seq, held, ckpt.head_hash)
            if source == "stored":
                reason += f" (the stored checkpoint {ckpt.checkpoint_id})"
            return AnchorResult(False, reason, chain, latest)
    if latest is None:
        note = f"no checkpoint of this log is witnessed in {witness} yet"
        return AnchorResult(True, note, chain)
    reason = (
        f"the witnessed checkpoint at sequence {latest.seq} "
        f"({latest.at:%Y-%m-%d %H:%M:%S} UTC) matches"
    )
    return AnchorResult(True, reason, chain, latest)

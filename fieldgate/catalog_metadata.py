"""The catalog as a TUF repository: published by factories, verified at import.

A catalog repository is a directory::

    metadata/root.json  metadata/N.root.json  metadata/timestamp.json
    metadata/snapshot.json  metadata/targets.json
    targets/manifests/NAME/VERSION.json

Each manifest is a target file (its canonical JSON, with length and sha256), and the
artifact it names is recorded in the target's ``custom`` (uri, length, sha256). The four
roles are held by factory keys, k of n each. Everything is built and checked with
python-tuf's Metadata API; what this module adds is the anchor: every role key must be a
factory key enrolled under the deployment's root of trust (:mod:`fieldgate.trust`), and an
import is checked against the metadata the store already holds (rollback, freeze).
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from fieldgate.contract import canonical_json, sha256_hex
from fieldgate.errors import CatalogRefused, FieldgateError
from fieldgate.manifest import ModuleManifest
from fieldgate.signing import SigningKey, key_id_of
from fieldgate.store import HeldMetadata, ImportResult, Store
from fieldgate.trust import StoredKey

ROLES = ("root", "timestamp", "snapshot", "targets")
"""The top-level TUF roles; each is held by factory keys."""


def target_path(manifest: ModuleManifest) -> str:
    """Where a manifest lives among the targets: ``manifests/NAME/VERSION.json``."""
    return f"manifests/{manifest.name}/{manifest.version}.json"


def manifest_bytes(manifest: ModuleManifest) -> bytes:
    """The target file of a manifest: its canonical JSON, signature included."""
    return canonical_json(manifest.model_dump(mode="json"))


def _artifact_record(manifest: ModuleManifest) -> dict[str, Any]:
    """What the targets metadata says the manifest's artifact is."""
    artifact = manifest.artifact
    return {
        "uri": artifact.uri,
        "length": artifact.size_bytes,
        "sha256": artifact.digest.removeprefix("sha256:"),
    }


def tuf_key(public_b64: str) -> SSlibKey:
    """A fieldgate public key as a TUF key (its key id is fieldgate's ``ed25519:…`` id)."""
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
    return SSlibKey.from_crypto(public, keyid=key_id_of(public_b64))


def _signer(key: SigningKey) -> CryptoSigner:
    return CryptoSigner(key.private, tuf_key(key.public_b64))


def _public_b64(key: Any) -> str | None:
    """The raw ed25519 public key (base64) of a TUF key, or None for another kind of key."""
    if getattr(key, "keytype", None) != "ed25519" or getattr(key, "scheme", None) != "ed25519":
        return None
    try:
        return base64.b64encode(bytes.fromhex(key.keyval["public"])).decode()
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Published:
    """What one publish wrote."""

    versions: dict[str, int]
    """The version of each role's metadata now in the repository."""
    targets: list[str]
    """The target paths listed."""


def _load(path: Path) -> Metadata[Any] | None:
    return Metadata.from_file(str(path)) if path.exists() else None


def _same_keys(root: Root, keys: Sequence[SSlibKey], threshold: int) -> bool:
    wanted = sorted(k.keyid for k in keys)
    return all(
        sorted(root.roles[role].keyids) == wanted and root.roles[role].threshold == threshold
        for role in ROLES
    )


def publish_repository(
    out: Path,
    manifests: Sequence[ModuleManifest],
    signers: Sequence[SigningKey],
    threshold: int,
    expires: timedelta,
    now: datetime,
) -> Published:
    """Write (or republish) the catalog repository at ``out``, every role signed by ``signers``.

    The manifests are written as they are (signing them is the caller's business). A
    republish adds one to the version of timestamp, snapshot and targets; the root gets a
    new version (``N.root.json``) only when the keys or threshold change or it expires,
    signed by the old root's keys among ``signers`` and by the new ones.

    Raises:
        FieldgateError: too few signers for the threshold, or for rotating the old root.
    """
    keys = [tuf_key(k.public_b64) for k in signers]
    if len({k.keyid for k in keys}) != len(keys):
        raise FieldgateError("the same key is given twice")
    if not 1 <= threshold <= len(keys):
        raise FieldgateError(
            f"--threshold {threshold} must be between 1 and the {len(keys)} key(s)"
        )
    metadata_dir, targets_dir = out / "metadata", out / "targets"
    previous = {role: _load(metadata_dir / f"{role}.json") for role in ROLES}
    tuf_signers = [_signer(k) for k in signers]
    expiry = now + expires

    old_root = previous["root"]
    written: dict[str, bytes] = {}
    if (
        old_root is None
        or not _same_keys(old_root.signed, keys, threshold)
        or old_root.signed.expires < expiry - expires / 2
    ):
        root = Root(
            version=old_root.signed.version + 1 if old_root is not None else 1,
            expires=expiry,
            consistent_snapshot=False,
        )
        for role in ROLES:
            for key in keys:
                root.add_key(key, role)
            root.roles[role].threshold = threshold
        root_md = Metadata(root)
        for signer in tuf_signers:
            root_md.sign(signer, append=True)
        if old_root is not None:
            held = set(old_root.signed.roles["root"].keyids)
            if len(held & {k.keyid for k in keys}) < old_root.signed.roles["root"].threshold:
                raise FieldgateError(
                    f"rotating the catalog root from version {old_root.signed.version} needs "
                    f"{old_root.signed.roles['root'].threshold} of its keys among --key"
                )
        data = root_md.to_bytes()
        written[f"{root.version}.root.json"] = data
        written["root.json"] = data

    def version_after(role: str) -> int:
        held = previous[role]
        return held.signed.version + 1 if held is not None else 1

    targets = Targets(version=version_after("targets"), expires=expiry)
    files: dict[str, bytes] = {}
    for manifest in manifests:
        path = target_path(manifest)
        data = manifest_bytes(manifest)
        measured = TargetFile.from_data(path, data, ["sha256"])
        targets.targets[path] = TargetFile(
            measured.length,
            measured.hashes,
            path,
            unrecognized_fields={"custom": {"artifact": _artifact_record(manifest)}},
        )
        files[path] = data
    targets_bytes = _signed_bytes(Metadata(targets), tuf_signers)
    snapshot = Snapshot(version=version_after("snapshot"), expires=expiry)
    snapshot.meta["targets.json"] = _meta_file(targets.version, targets_bytes)
    snapshot_bytes = _signed_bytes(Metadata(snapshot), tuf_signers)
    timestamp = Timestamp(
        version=version_after("timestamp"),
        expires=expiry,
        snapshot_meta=_meta_file(snapshot.version, snapshot_bytes),
    )
    written |= {
        "targets.json": targets_bytes,
        "snapshot.json": snapshot_bytes,
        "timestamp.json": _signed_bytes(Metadata(timestamp), tuf_signers),
    }
    for path, data in files.items():
        _write(targets_dir / path, data)
    # timestamp.json last: a reader that sees it sees everything it points to
    for name in sorted(written, key=lambda n: n == "timestamp.json"):
        _write(metadata_dir / name, written[name])
    versions = {
        "root": (old_root.signed.version if old_root is not None else 0) + ("root.json" in written),
        "timestamp": timestamp.version,
        "snapshot": snapshot.version,
        "targets": targets.version,
    }
    return Published(versions, sorted(files))


def _signed_bytes(metadata: Metadata[Any], signers: Sequence[CryptoSigner]) -> bytes:
    for signer in signers:
        metadata.sign(signer, append=True)
    return metadata.to_bytes()


def _meta_file(version: int, data: bytes) -> MetaFile:
    measured = MetaFile.from_data(version, data, ["sha256"])
    return MetaFile(version, measured.length, measured.hashes)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


@dataclass(frozen=True)
class VerifiedCatalog:
    """A catalog repository that verified: its manifests and the metadata to hold."""

    manifests: list[ModuleManifest]
    """The manifests its targets list, each checked against its length, hash and signature."""
    metadata: list[HeldMetadata]
    """Every metadata file it was verified with (new root versions, timestamp, snapshot,
    targets), for the store to hold."""
    versions: dict[str, int]
    """The version of each role now trusted."""
    repository: str
    """The repository's id (:func:`repository_id`)."""


def repository_id(repo: Path) -> str:
    """The id of the catalog repository at ``repo``: the sha256 of the signed part of its
    first root version (``metadata/1.root.json``), which every later version descends from.

    Raises:
        CatalogRefused: there is no readable first root version.
    """
    where = "metadata/1.root.json"
    try:
        first: Metadata[Any] = Metadata.from_bytes((repo / where).read_bytes())
    except OSError as exc:
        detail = f"cannot read it: {exc.strerror or exc}"
        raise CatalogRefused(str(repo), where, "malformed", detail) from None
    except DeserializationError as exc:
        raise CatalogRefused(str(repo), where, "malformed", f"not TUF metadata ({exc})") from None
    return sha256_hex(first.signed_bytes)


class _Verifier:
    """One verification of a repository directory against held metadata."""

    def __init__(
        self,
        repo: Path,
        held: Mapping[str, HeldMetadata],
        factory_keys: Mapping[str, StoredKey],
        now: datetime,
    ) -> None:
        self.repo = repo
        self.source = str(repo)
        self.repository = repository_id(repo)
        self.held = held
        self.factory_keys = factory_keys
        self.now = now

    def refuse(self, where: str, reason: str, detail: str) -> CatalogRefused:
        return CatalogRefused(self.source, where, reason, detail)

    def read(self, name: str, *, target: bool = False, limit: int | None = None) -> bytes:
        """The file's bytes; with ``limit``, at most one more than that (endless data ends)."""
        where = f"targets/{name}" if target else f"metadata/{name}"
        path = self.repo / where
        try:
            with path.open("rb") as file:
                return file.read() if limit is None else file.read(limit + 1)
        except OSError as exc:
            reason = "target-mismatch" if target else "malformed"
            raise self.refuse(where, reason, f"cannot read it: {exc.strerror or exc}") from None

    def parse(self, name: str, data: bytes, kind: type[Signed]) -> Metadata[Any]:
        """``data`` as metadata of ``kind`` (its role's class)."""
        try:
            metadata: Metadata[Any] = Metadata.from_bytes(data)
        except DeserializationError as exc:
            raise self.refuse(
                f"metadata/{name}", "malformed", f"not TUF metadata ({exc})"
            ) from None
        if not isinstance(metadata.signed, kind):
            detail = f"holds {metadata.signed.type} metadata, not {kind.type}"
            raise self.refuse(f"metadata/{name}", "malformed", detail)
        return metadata

    def check_enrolled(self, root: Metadata[Root], name: str) -> None:
        """Every key of every role must be an enrolled factory key."""
        for role in ROLES:
            for key_id in root.signed.roles[role].keyids:
                key = root.signed.keys.get(key_id)
                enrolled = self.factory_keys.get(key_id)
                public = _public_b64(key) if key is not None else None
                if enrolled is None or public is None or enrolled.public_b64 != public:
                    detail = (
                        f"root version {root.signed.version} gives the {role} role key "
                        f"{key_id}, which is not an enrolled factory key"
                    )
                    raise self.refuse(f"metadata/{name}", "unenrolled-key", detail)

    def check_signed(
        self, delegator: Metadata[Root], role: str, metadata: Metadata[Any], name: str
    ) -> None:
        """``metadata`` must carry ``threshold`` valid signatures of ``role``'s keys."""
        root = delegator.signed
        result = root.get_verification_result(role, metadata.signed_bytes, metadata.signatures)
        if result.verified:
            return
        role_keys = set(root.roles[role].keyids)
        foreign = sorted(k for k in metadata.signatures if k not in role_keys)
        if foreign:
            detail = (
                f"signed by {', '.join(foreign)}, not a {role} key of catalog root version "
                f"{root.version} (only enrolled factory keys hold catalog roles)"
            )
            raise self.refuse(f"metadata/{name}", "unenrolled-key", detail)
        detail = (
            f"{len(result.signed)} valid signature(s) of {role} keys; root version "
            f"{root.version} requires {result.threshold}"
        )
        raise self.refuse(f"metadata/{name}", "threshold", detail)

    def check_fresh(self, role: str, metadata: Metadata[Any], name: str) -> None:
        """Not older than the held version of ``role``, and not expired."""
        held = self.held.get(role)
        version = metadata.signed.version
        if held is not None and version < held.version:
            detail = f"version {version} is older than the held version {held.version}"
            raise self.refuse(f"metadata/{name}", "rollback", detail)
        if metadata.signed.is_expired(self.now):
            detail = f"version {version} expired at {metadata.signed.expires:%Y-%m-%d %H:%M} UTC"
            raise self.refuse(f"metadata/{name}", "expired", detail)

    def check_meta(self, recorded: MetaFile, data: bytes, name: str, by: str) -> None:
        try:
            recorded.verify_length_and_hashes(data)
        except LengthOrHashMismatchError as exc:
            detail = f"does not match what {by} records: {exc}"
            raise self.refuse(f"metadata/{name}", "target-mismatch", detail) from None

    def roots(self) -> tuple[Metadata[Root], list[HeldMetadata]]:
        """The trusted catalog root after the repository's rotations, and the new versions."""
        accepted: list[HeldMetadata] = []
        held = self.held.get("root")
        if held is None:
            name = "1.root.json"
            data = self.read(name)
            trusted = self.parse(name, data, Root)
            # The first catalog root is anchored in the deployment's root of trust: its keys
            # are enrolled factory keys, and they sign it to its own threshold.
            self.check_enrolled(trusted, name)
            self.check_signed(trusted, "root", trusted, name)
            accepted.append(HeldMetadata(self.repository, "root", trusted.signed.version, data))
        else:
            trusted = self.parse("root.json (held)", held.data, Root)
        while True:
            name = f"{trusted.signed.version + 1}.root.json"
            if not (self.repo / "metadata" / name).exists():
                break
            data = self.read(name)
            successor = self.parse(name, data, Root)
            if successor.signed.version != trusted.signed.version + 1:
                detail = f"holds version {successor.signed.version}"
                raise self.refuse(f"metadata/{name}", "malformed", detail)
            self.check_signed(trusted, "root", successor, name)
            self.check_signed(successor, "root", successor, name)
            trusted = successor
            accepted.append(HeldMetadata(self.repository, "root", trusted.signed.version, data))
        top = self.parse("root.json", self.read("root.json"), Root)
        if top.signed.version < trusted.signed.version:
            detail = f"version {top.signed.version} is older than the trusted version "
            raise self.refuse(
                "metadata/root.json", "rollback", detail + str(trusted.signed.version)
            )
        if top.signed.version > trusted.signed.version:
            detail = f"version {top.signed.version} has no {top.signed.version}.root.json chain"
            raise self.refuse("metadata/root.json", "malformed", detail)
        # A factory key revoked since the root was accepted voids the roles it holds.
        self.check_enrolled(trusted, "root.json")
        self.check_fresh("root", trusted, "root.json")
        return trusted, accepted

    def verify(self) -> VerifiedCatalog:
        root, accepted = self.roots()
        ts_data = self.read("timestamp.json")
        timestamp = self.parse("timestamp.json", ts_data, Timestamp)
        self.check_signed(root, "timestamp", timestamp, "timestamp.json")
        self.check_fresh("timestamp", timestamp, "timestamp.json")

        snap_data = self.read("snapshot.json", limit=timestamp.signed.snapshot_meta.length)
        snapshot_meta = timestamp.signed.snapshot_meta
        self.check_meta(snapshot_meta, snap_data, "snapshot.json", "timestamp.json")
        snapshot = self.parse("snapshot.json", snap_data, Snapshot)
        self.check_signed(root, "snapshot", snapshot, "snapshot.json")
        self.check_fresh("snapshot", snapshot, "snapshot.json")
        if snapshot.signed.version != snapshot_meta.version:
            detail = (
                f"version {snapshot.signed.version}; timestamp.json records {snapshot_meta.version}"
            )
            raise self.refuse("metadata/snapshot.json", "target-mismatch", detail)

        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise self.refuse("metadata/snapshot.json", "malformed", "lists no targets.json")
        targets_data = self.read("targets.json", limit=targets_meta.length)
        self.check_meta(targets_meta, targets_data, "targets.json", "snapshot.json")
        targets = self.parse("targets.json", targets_data, Targets)
        self.check_signed(root, "targets", targets, "targets.json")
        self.check_fresh("targets", targets, "targets.json")
        if targets.signed.version != targets_meta.version:
            detail = (
                f"version {targets.signed.version}; snapshot.json records {targets_meta.version}"
            )
            raise self.refuse("metadata/targets.json", "target-mismatch", detail)

        manifests = [self.manifest(path, target) for path, target in targets.signed.targets.items()]
        metadata = [
            *accepted,
            HeldMetadata(self.repository, "timestamp", timestamp.signed.version, ts_data),
            HeldMetadata(self.repository, "snapshot", snapshot.signed.version, snap_data),
            HeldMetadata(self.repository, "targets", targets.signed.version, targets_data),
        ]
        versions = {
            "root": root.signed.version,
            "timestamp": timestamp.signed.version,
            "snapshot": snapshot.signed.version,
            "targets": targets.signed.version,
        }
        return VerifiedCatalog(manifests, metadata, versions, self.repository)

    def manifest(self, path: str, target: TargetFile) -> ModuleManifest:
        """The manifest at target ``path``, checked against its record and its signature."""
        where = f"targets/{path}"
        if not path.startswith("manifests/") or ".." in path.split("/"):
            raise self.refuse(where, "malformed", "not a manifests/NAME/VERSION.json target")
        data = self.read(path, target=True, limit=target.length)
        try:
            target.verify_length_and_hashes(data)
        except LengthOrHashMismatchError as exc:
            raise self.refuse(where, "target-mismatch", f"{exc} (targets.json)") from None
        try:
            manifest = ModuleManifest.model_validate_json(data)
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise self.refuse(where, "malformed", f"not a module manifest ({first})") from None
        if target_path(manifest) != path:
            raise self.refuse(where, "malformed", f"holds {manifest.ref}, not what its path says")
        custom = target.custom if isinstance(target.custom, dict) else {}
        if custom.get("artifact") != _artifact_record(manifest):
            detail = "the artifact recorded in targets.json is not the one the manifest names"
            raise self.refuse(where, "target-mismatch", detail)
        problem = manifest.signature_problem(
            {key_id: key.public_b64 for key_id, key in self.factory_keys.items()}
        )
        if problem is not None:
            raise self.refuse(where, "edited", f"{manifest.ref}: {problem}")
        return manifest


def verify_repository(
    repo: Path,
    held: Mapping[str, HeldMetadata],
    factory_keys: Mapping[str, StoredKey],
    now: datetime,
) -> VerifiedCatalog:
    """Verify the catalog repository at ``repo`` against the ``held`` metadata.

    Args:
        repo: The repository directory.
        held: The newest held metadata of each role of this repository
            (``CatalogStore.held_metadata(repository_id(repo))``).
        factory_keys: The enrolled factory keys by key id: the only keys that may hold a
            role or sign a manifest.
        now: The time metadata must not have expired by.

    Raises:
        CatalogRefused: naming the file and the reason (edited, rollback, expired,
            threshold, unenrolled-key, target-mismatch, malformed).
    """
    return _Verifier(repo, held, factory_keys, now).verify()


def import_repository(
    store: Store,
    repo: Path,
    factory_keys: Mapping[str, StoredKey],
    actor: str,
    now: datetime,
    source: str | None = None,
) -> tuple[VerifiedCatalog, ImportResult]:
    """Verify the repository at ``repo`` and import its manifests with its metadata, in one
    transaction; nothing is stored when it is refused (``source``: what the import record
    names, the directory by default)."""
    held = store.catalog.held_metadata(repository_id(repo))
    verified = verify_repository(repo, held, factory_keys, now)
    result = store.catalog.import_manifests(
        [(m, None) for m in verified.manifests],
        source=source or str(repo),
        actor=actor,
        factory_keys=factory_keys,
        metadata=verified.metadata,
    )
    return verified, result


def export_repository(store: Store, out: Path) -> list[Path]:
    """Write every catalog repository the store holds, as verified, under ``out``: one
    directory per repository (named by its id), laid out as a published repository.

    Field agents are given these (a device checks its installs against the targets
    itself); the files are the held metadata byte for byte and the stored manifests'
    target files, so they verify exactly as they did at import. Each directory is written
    beside its place and swapped in whole.

    Returns:
        The repository directories, oldest repository first.
    """
    written: list[Path] = []
    for repository in dict.fromkeys(r for r, _, _ in store.catalog.held_versions()):
        files = store.catalog.held_files(repository)
        newest = {h.role: h for h in files}
        targets: Metadata[Targets] = Metadata.from_bytes(newest["targets"].data)
        contents: dict[str, bytes] = {}
        for held in files:
            if held.role == "root":
                contents[f"metadata/{held.version}.root.json"] = held.data
        for role, held in newest.items():
            contents[f"metadata/{role}.json"] = held.data
        for path in targets.signed.targets:
            name, version = path.removeprefix("manifests/").removesuffix(".json").split("/", 1)
            contents[f"targets/{path}"] = manifest_bytes(store.catalog.get(name, version))
        target = out / repository[:16]
        staging = out / f".{repository[:16]}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for relative, data in contents.items():
            _write(staging / relative, data)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        written.append(target)
    return written

"""The module catalog: immutable manifests, where each came from, and what was verified.

A catalog imported from a TUF repository also leaves its metadata here, per role and
version (:class:`CatalogMetadataRow`), stored in the same transaction as its manifests: the
next import is verified against it (a lower version is a rollback).
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import sqlalchemy
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, col, select

from fieldgate.contract import parse_version, sha256_hex
from fieldgate.errors import CatalogRefused, ManifestInvalid, NotFound
from fieldgate.manifest import ModuleManifest
from fieldgate.store._engine import for_writing, read_scalar, transaction
from fieldgate.store._table import StoreTable, as_utc, json_text, utc_now, utc_time_field
from fieldgate.trust import StoredKey


class CatalogImportRow(StoreTable, table=True):
    """One import that added manifests: who, when, from which file."""

    __tablename__ = "catalog_import"

    id: int | None = Field(default=None, primary_key=True)
    source: str
    actor: str
    imported_at: datetime = utc_time_field()
    added: int


class ManifestRow(StoreTable, table=True):
    """One module version: the full manifest and the facts checked when it was imported."""

    __tablename__ = "catalog_manifest"

    name: str = Field(primary_key=True)
    version: str = Field(primary_key=True)
    import_id: int = Field(foreign_key="catalog_import.id", index=True)
    manifest_json: str
    manifest_hash: str
    observed_digest: str
    signature_valid: bool
    signature_note: str


class CatalogMetadataRow(StoreTable, table=True):
    """One version of one role's TUF metadata of the catalog, as signed and accepted."""

    __tablename__ = "catalog_metadata"

    repository: str = Field(primary_key=True)
    """Which catalog repository: the sha256 of its first root version's signed part."""
    role: str = Field(primary_key=True)
    """root, timestamp, snapshot or targets."""
    version: int = Field(primary_key=True)
    """The metadata's version."""
    import_id: int = Field(foreign_key="catalog_import.id", index=True)
    """The import that accepted it."""
    metadata_json: str
    """The signed metadata file, byte for byte (UTF-8)."""


@dataclass(frozen=True)
class HeldMetadata:
    """One role's metadata at one version (what an import accepts and the store holds)."""

    repository: str
    """The repository's id (see :attr:`CatalogMetadataRow.repository`)."""
    role: str
    """root, timestamp, snapshot or targets."""
    version: int
    """Its version."""
    data: bytes
    """The signed file as published."""


_NEWEST_IMPORT = sqlalchemy.select(func.max(col(CatalogImportRow.id)))


@dataclass(frozen=True)
class CatalogRecord:
    """A stored manifest with its provenance and verification facts."""

    manifest: ModuleManifest
    """The manifest as imported."""
    import_id: int
    """The import that added it."""
    source: str
    """The file (or other source) it was imported from."""
    actor: str
    """Who imported it."""
    imported_at: datetime
    """When (UTC)."""
    observed_digest: str
    """The digest the artifact store measured at import."""
    signature_valid: bool
    """Whether an enrolled factory key signed the whole manifest (checked at import)."""
    signature_note: str
    """Why the signature is valid or not, e.g. which key verified it."""

    @property
    def ref(self) -> str:
        """``name@version``."""
        return self.manifest.ref

    @property
    def digest_matches(self) -> bool:
        """Whether the observed artifact is the one the factory declared (and signed)."""
        return self.observed_digest == self.manifest.artifact.digest


@dataclass(frozen=True)
class ImportResult:
    """What one catalog import did."""

    import_id: int | None
    """Id of the import record; None when nothing was new."""
    added: list[str]
    """``name@version`` of the manifests added."""
    unchanged: list[str]
    """``name@version`` of the manifests already stored exactly as given."""


def _manifest_json(manifest: ModuleManifest) -> str:
    return json_text(manifest.model_dump(mode="json"))


def _observed_digest(manifest: ModuleManifest, given: str | None, source: str) -> str:
    """Return the digest the artifact store sees: a ``file://`` artifact's sha256, else ``given``.

    Without a ``given`` digest for another URI scheme, the declared digest stands.
    """
    uri = urlparse(manifest.artifact.uri)
    if uri.scheme != "file":
        return given or manifest.artifact.digest
    path = Path(unquote(uri.path))
    digest = hashlib.sha256()
    try:
        with path.open("rb") as artifact:
            while chunk := artifact.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        problem = f"cannot read artifact {path}: {exc.strerror or exc}"
        raise ManifestInvalid(source, [(f"{manifest.ref} artifact.uri", problem)]) from None
    return "sha256:" + digest.hexdigest()


def _check_signature(manifest: ModuleManifest, keys: Mapping[str, StoredKey]) -> tuple[bool, str]:
    """Whether an enrolled factory key signed the whole manifest, and the note saying why."""
    problem = manifest.signature_problem({key_id: row.public_b64 for key_id, row in keys.items()})
    if problem is not None:
        return False, problem
    key = keys[manifest.artifact.signer or ""]
    return True, f"signed by {key.owner} ({key.key_id})"


def _record(row: ManifestRow, origin: CatalogImportRow) -> CatalogRecord:
    return CatalogRecord(
        manifest=ModuleManifest.model_validate_json(row.manifest_json),
        import_id=origin.id or 0,
        source=origin.source,
        actor=origin.actor,
        imported_at=as_utc(origin.imported_at),
        observed_digest=row.observed_digest,
        signature_valid=row.signature_valid,
        signature_note=row.signature_note,
    )


def _fresh_metadata(
    session: Session, metadata: Sequence[HeldMetadata], source: str
) -> builtins.list[HeldMetadata]:
    """The metadata not held yet; refuse it if a newer version (or other content at the same
    version) was stored since it was verified."""
    fresh = []
    for held in metadata:
        newest = session.exec(
            select(func.max(CatalogMetadataRow.version)).where(
                CatalogMetadataRow.repository == held.repository,
                CatalogMetadataRow.role == held.role,
            )
        ).one()
        same = session.get(CatalogMetadataRow, (held.repository, held.role, held.version))
        if same is not None:
            if same.metadata_json.encode() != held.data:
                detail = f"version {held.version} differs from the held {held.role} version"
                raise CatalogRefused(source, f"metadata/{held.role}.json", "rollback", detail)
            continue
        if newest is not None and newest > held.version:
            detail = f"version {held.version} is older than the held version {newest}"
            raise CatalogRefused(source, f"metadata/{held.role}.json", "rollback", detail)
        fresh.append(held)
    return fresh


class CatalogStore:
    """Module manifests by name and version, immutable once imported."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)
        # (revision, every record): the catalog as of its newest import
        self._cached: tuple[int, builtins.list[CatalogRecord]] | None = None

    def import_manifests(
        self,
        manifests: Sequence[tuple[ModuleManifest, str | None]],
        source: str,
        actor: str,
        factory_keys: Mapping[str, StoredKey] | None = None,
        metadata: Sequence[HeldMetadata] = (),
    ) -> ImportResult:
        """Add manifests in one transaction; nothing is stored if any of them is refused.

        Args:
            manifests: Each manifest with the digest the artifact store observed for it
                (None: the declared digest; ``file://`` artifacts are always hashed here).
            source: Where the manifests come from, usually the catalog file's path.
            actor: Who imports them.
            factory_keys: The enrolled factory keys by key id (``KeyTrust.trusted_keys``):
                only their signatures make a manifest signed. None: no key is trusted.
            metadata: The TUF metadata the manifests were verified with, held from now on
                (a version already held stays as it is).

        Raises:
            ManifestInvalid: a manifest differs from the stored one of the same name and
                version (manifests are immutable), or a ``file://`` artifact is unreadable.
            CatalogRefused: a newer version of a role's metadata was stored meanwhile.
        """
        prepared: dict[str, tuple[ModuleManifest, str, str]] = {}
        for manifest, given in manifests:
            text = _manifest_json(manifest)
            earlier = prepared.get(manifest.ref)
            if earlier is not None and earlier[1] != text:
                problem = "listed twice with different content"
                raise ManifestInvalid(source, [(manifest.ref, problem)])
            prepared[manifest.ref] = (manifest, text, _observed_digest(manifest, given, source))

        added: list[str] = []
        unchanged: list[str] = []
        with transaction(self._writer, f"importing manifests from {source}") as session:
            new: list[tuple[ModuleManifest, str, str]] = []
            for ref, (manifest, text, observed) in prepared.items():
                stored = session.get(ManifestRow, (manifest.name, manifest.version))
                if stored is None:
                    new.append((manifest, text, observed))
                elif stored.manifest_hash == sha256_hex(text.encode()):
                    unchanged.append(ref)
                else:
                    problem = (
                        f"module {manifest.name} version {manifest.version} is already in the "
                        "catalog with different content; manifests are immutable, so publish "
                        "a new version"
                    )
                    raise ManifestInvalid(source, [(ref, problem)])
            fresh = _fresh_metadata(session, metadata, source)
            if not new and not fresh:
                return ImportResult(None, [], unchanged)
            keys = factory_keys or {}
            origin = CatalogImportRow(
                source=source, actor=actor, imported_at=utc_now(), added=len(new)
            )
            session.add(origin)
            session.flush()
            assert origin.id is not None
            for held in fresh:
                session.add(
                    CatalogMetadataRow(
                        repository=held.repository,
                        role=held.role,
                        version=held.version,
                        import_id=origin.id,
                        metadata_json=held.data.decode(),
                    )
                )
            for manifest, text, observed in new:
                valid, note = _check_signature(manifest, keys)
                session.add(
                    ManifestRow(
                        name=manifest.name,
                        version=manifest.version,
                        import_id=origin.id,
                        manifest_json=text,
                        manifest_hash=sha256_hex(text.encode()),
                        observed_digest=observed,
                        signature_valid=valid,
                        signature_note=note,
                    )
                )
                added.append(manifest.ref)
            return ImportResult(origin.id, added, unchanged)

    def held_metadata(self, repository: str) -> dict[str, HeldMetadata]:
        """The newest held metadata of each role of ``repository`` (empty: never imported)."""
        query = select(CatalogMetadataRow).where(CatalogMetadataRow.repository == repository)
        with transaction(self._engine, "reading the catalog's metadata") as session:
            held: dict[str, HeldMetadata] = {}
            for row in session.exec(query).all():
                if row.role not in held or held[row.role].version < row.version:
                    data = row.metadata_json.encode()
                    held[row.role] = HeldMetadata(repository, row.role, row.version, data)
        return held

    def held_files(self, repository: str) -> builtins.list[HeldMetadata]:
        """Every held metadata file of ``repository``, by role and version (empty: none)."""
        query = select(CatalogMetadataRow).where(CatalogMetadataRow.repository == repository)
        with transaction(self._engine, "reading the catalog's metadata") as session:
            rows = session.exec(query).all()
            held = [
                HeldMetadata(repository, r.role, r.version, r.metadata_json.encode()) for r in rows
            ]
        return sorted(held, key=lambda h: (h.role, h.version))

    def held_versions(self) -> builtins.list[tuple[str, str, int]]:
        """Every held (repository, role, version), in order."""
        columns = (
            CatalogMetadataRow.repository,
            CatalogMetadataRow.role,
            CatalogMetadataRow.version,
        )
        with transaction(self._engine, "reading the catalog's metadata") as session:
            rows = session.exec(select(*columns)).all()
        return sorted(
            (str(repository), str(role), int(version)) for repository, role, version in rows
        )

    def revision(self) -> int:
        """The newest import's id (0 for an empty catalog): it moves on with every import."""
        newest = read_scalar(self._engine, _NEWEST_IMPORT, "reading the catalog revision")
        return int(newest or 0)

    def _all(self) -> builtins.list[CatalogRecord]:
        """Every record by name and version order, read once per catalog revision.

        Manifests are immutable and only an import adds them (with a new import id),
        so the newest import id tells whether the records kept here are current.
        """
        cached = self._cached
        if cached is not None and cached[0] == self.revision():
            return cached[1]
        query = select(ManifestRow, CatalogImportRow).join(
            CatalogImportRow, col(ManifestRow.import_id) == CatalogImportRow.id
        )
        with transaction(self._engine, "reading the catalog") as session:
            revision = int(session.execute(_NEWEST_IMPORT).scalar() or 0)
            records = [_record(row, origin) for row, origin in session.exec(query)]
        records.sort(key=lambda r: (r.manifest.name, parse_version(r.manifest.version)))
        self._cached = (revision, records)
        return records

    def list(self, name: str | None = None) -> builtins.list[CatalogRecord]:
        """List every stored module version (of module ``name`` only, when given), by name and
        then version order."""
        return [r for r in self._all() if name is None or r.manifest.name == name]

    def versions(self, name: str) -> builtins.list[str]:
        """List the stored versions of module ``name``, oldest first; raise NotFound if none."""
        versions = [r.manifest.version for r in self.list(name)]
        if not versions:
            raise NotFound(f"module {name!r} is not in the catalog")
        return versions

    def get(self, name: str, version: str) -> ModuleManifest:
        """Return the manifest of ``name`` at ``version``; raise NotFound naming it if absent."""
        return self.record(name, version).manifest

    def record(self, name: str, version: str) -> CatalogRecord:
        """Return ``name`` at ``version`` with where it came from and what verified at import."""
        known = self.list(name)
        for record in known:
            if record.manifest.version == version:
                return record
        if not known:
            raise NotFound(f"module {name!r} is not in the catalog")
        listed = ", ".join(r.manifest.version for r in known)
        raise NotFound(
            f"module {name!r} has no version {version!r} in the catalog (known: {listed})"
        )

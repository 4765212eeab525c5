"""The module catalog: immutable manifests, where each came from, and what was verified."""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import sqlalchemy
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Field, col, select

from fieldgate.contract import parse_version, sha256_hex
from fieldgate.errors import ManifestInvalid, NotFound
from fieldgate.manifest import ModuleManifest
from fieldgate.store._engine import for_writing, read_scalar, transaction
from fieldgate.store._keys import TrustedKeyRow
from fieldgate.store._table import StoreTable, as_utc, json_text, utc_now, utc_time_field


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
    """Whether a trusted artifact key signed the whole manifest (checked at import)."""
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


def _check_signature(manifest: ModuleManifest, keys: dict[str, TrustedKeyRow]) -> tuple[bool, str]:
    """Whether a trusted artifact key signed the whole manifest, and the note saying why."""
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
    ) -> ImportResult:
        """Add manifests in one transaction; nothing is stored if any of them is refused.

        Args:
            manifests: Each manifest with the digest the artifact store observed for it
                (None: the declared digest; ``file://`` artifacts are always hashed here).
            source: Where the manifests come from, usually the catalog file's path.
            actor: Who imports them.

        Raises:
            ManifestInvalid: a manifest differs from the stored one of the same name and
                version (manifests are immutable), or a ``file://`` artifact is unreadable.
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
            if not new:
                return ImportResult(None, [], unchanged)
            keys = {
                row.key_id: row
                for row in session.exec(
                    select(TrustedKeyRow).where(TrustedKeyRow.purpose == "artifact")
                )
            }
            origin = CatalogImportRow(
                source=source, actor=actor, imported_at=utc_now(), added=len(new)
            )
            session.add(origin)
            session.flush()
            assert origin.id is not None
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

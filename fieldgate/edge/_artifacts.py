"""Where a field agent gets the artifact a command installs, and the digest it checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fieldgate.edge._targets import CatalogSet, CatalogTargets
from fieldgate.errors import ArtifactUnavailable


def sample_artifact(module: str, version: str) -> bytes:
    """The stand-in content of ``sample://module/version`` artifacts.

    Its sha256 is :func:`fieldgate.manifest.sample_digest`, the digest the sample
    catalog and the scenarios name.
    """
    return f"artifact {module}@{version}".encode()


def digest_of(content: bytes) -> str:
    """``sha256:`` and the hex digest of ``content``."""
    return "sha256:" + hashlib.sha256(content).hexdigest()


class ArtifactSource:
    """Fetches artifacts: files ``DIR/{module}/{version}`` when a directory is set, else the
    stand-in content of sample artifacts; with ``targets``, each is also checked against the
    catalog's signed TUF targets."""

    def __init__(
        self, directory: Path | None = None, targets: CatalogTargets | CatalogSet | None = None
    ) -> None:
        self.directory = directory
        self.targets = targets

    def problem(self, module: str, version: str, content: bytes) -> str | None:
        """Why ``content`` is not what the catalog's targets record (None: it is, or the
        device holds no catalog root to check with)."""
        if self.targets is None:
            return None
        return self.targets.problem(module, version, content)

    def fetch(self, module: str, version: str) -> bytes:
        """The artifact's bytes; raise ArtifactUnavailable when there are none.

        With ``targets``, at most one byte more than the signed length is read: endless
        data is cut off there (and then refused by :meth:`problem`), never read to its end.
        """
        limit = self.targets.length(module, version) if self.targets is not None else None
        if self.directory is None:
            content = sample_artifact(module, version)
            return content if limit is None else content[: limit + 1]
        path = self.directory / module / version
        try:
            with path.open("rb") as fp:
                return fp.read() if limit is None else fp.read(limit + 1)
        except OSError as exc:
            raise ArtifactUnavailable(f"{path}: {exc.strerror or exc}") from None

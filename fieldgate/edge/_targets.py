"""A field agent's own check of what it installs, against the catalog's TUF targets.

The control plane's command names a digest; a device that also holds the catalog's TUF
root (pinned in its state directory when it is provisioned) need not take the control
plane's word for it. :class:`CatalogTargets` runs python-tuf's client
(``tuf.ngclient.Updater``) over a catalog repository directory, with the root pinned in
``STATE/catalog-tuf/root.json``, and refuses an artifact whose length or sha256 is not what
the factory's signed targets metadata records for that module version: wrong software,
or endless data (the content is measured against the signed length before it is hashed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tuf.api.exceptions import DownloadHTTPError, RepositoryError
from tuf.ngclient import FetcherInterface, Updater

LOCAL = "local://repository/"
"""The base URL the local fetcher answers for (metadata under ``metadata/``)."""

PINNED_DIR = "catalog-tuf"
"""Where in the device's state directory the client keeps its trusted metadata."""


class LocalFetcher(FetcherInterface):
    """Serves a catalog repository directory to ``Updater`` (no network)."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(LOCAL):
            raise DownloadHTTPError(f"{url} is not in the local repository", 404)
        relative = unquote(urlparse(url).path).lstrip("/")
        if ".." in relative.split("/"):
            raise DownloadHTTPError(f"{url} leaves the repository", 404)
        path = self.repository / relative
        if not path.is_file():
            raise DownloadHTTPError(f"{path} does not exist", 404)
        return iter([path.read_bytes()])


def pin_catalog_root(state_dir: Path, root_json: bytes) -> Path:
    """Pin the catalog's root metadata in a device's state directory (provisioning)."""
    directory = state_dir / PINNED_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "root.json"
    path.write_bytes(root_json)
    return path


class CatalogTargets:
    """The factory's signed word on each artifact, as this device verifies it itself."""

    def __init__(self, repository: Path, state_dir: Path) -> None:
        """Bind the client to a repository directory and the root pinned in ``state_dir``."""
        self.repository = repository
        self.metadata_dir = state_dir / PINNED_DIR
        self._looked_up: tuple[str, str, dict[str, Any] | str] | None = None

    def length(self, module: str, version: str) -> int | None:
        """The signed length of ``module@version``'s artifact, to read no more than that
        (None: unknown, and :meth:`problem` will say why)."""
        artifact = self._artifact(module, version)
        self._looked_up = (module, version, artifact)
        if isinstance(artifact, dict) and isinstance(artifact.get("length"), int):
            return int(artifact["length"]) or None
        return None

    def _artifact(self, module: str, version: str) -> dict[str, Any] | str:
        """The artifact record of ``module@version``, or why there is none to trust."""
        if not (self.metadata_dir / "root.json").exists():
            return f"no catalog root is pinned in {self.metadata_dir}"
        updater = Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=LOCAL + "metadata/",
            target_base_url=LOCAL + "targets/",
            fetcher=LocalFetcher(self.repository),
            bootstrap=None,
        )
        try:
            updater.refresh()
            info = updater.get_targetinfo(f"manifests/{module}/{version}.json")
        except RepositoryError as exc:
            return f"the catalog's metadata does not verify: {exc}"
        except OSError as exc:
            return f"the catalog's metadata cannot be read: {exc}"
        if info is None:
            return f"{module}@{version} is not a target of the catalog"
        custom = info.custom if isinstance(info.custom, dict) else {}
        artifact = custom.get("artifact")
        if not isinstance(artifact, dict):
            return f"the catalog records no artifact for {module}@{version}"
        return artifact

    def problem(self, module: str, version: str, content: bytes) -> str | None:
        """Why ``content`` is not the artifact of ``module@version`` the factory signed, or
        None when its length and sha256 are the recorded ones."""
        looked_up, self._looked_up = self._looked_up, None
        if looked_up is not None and looked_up[:2] == (module, version):
            artifact = looked_up[2]
        else:
            artifact = self._artifact(module, version)
        if isinstance(artifact, str):
            return artifact
        length = artifact.get("length")
        if isinstance(length, int) and length and len(content) != length:
            return (
                f"the artifact is {len(content)} bytes; the catalog's signed targets say {length}"
            )
        expected = artifact.get("sha256")
        observed = hashlib.sha256(content).hexdigest()
        if observed != expected:
            return (
                f"the artifact's sha256 is {observed}; the catalog's signed targets say {expected}"
            )
        return None


class CatalogSet:
    """The catalog repositories a device was given, each with its own pinned root; the
    repository that lists a module version is the one whose signed word counts."""

    def __init__(self, repositories: list[Path], state_dir: Path, device_id: str) -> None:
        """Bind one client per repository, pinned under the device's own state directory
        (devices sharing an agent process never share trusted metadata)."""
        self.members = [
            CatalogTargets(repo, state_dir / f"{device_id}.catalog" / repo.name)
            for repo in repositories
        ]

    def pin(self) -> None:
        """Pin each repository's first root where none is pinned yet (provisioning): the
        client then walks the signed root versions from there."""
        for member in self.members:
            if not (member.metadata_dir / "root.json").exists():
                first = member.repository / "metadata" / "1.root.json"
                member.metadata_dir.mkdir(parents=True, exist_ok=True)
                (member.metadata_dir / "root.json").write_bytes(first.read_bytes())

    def _member(self, module: str, version: str) -> CatalogTargets | None:
        path = f"manifests/{module}/{version}.json"
        for member in self.members:
            if (member.repository / "targets" / path).is_file():
                return member
        return None

    def length(self, module: str, version: str) -> int | None:
        """The signed length of the artifact (see :meth:`CatalogTargets.length`)."""
        member = self._member(module, version)
        return member.length(module, version) if member is not None else None

    def problem(self, module: str, version: str, content: bytes) -> str | None:
        """Why ``content`` is not what the catalog signed; a module version no repository
        lists is refused."""
        member = self._member(module, version)
        if member is None:
            return f"{module}@{version} is not a target of any catalog this device was given"
        return member.problem(module, version, content)

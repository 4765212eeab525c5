"""Versions as the engineer types them: exact (``2.4.1``) or a prefix (``2.4``, ``v2``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from fieldgate.agents._summary import CatalogItem
from fieldgate.contract import parse_version


@dataclass(frozen=True)
class VersionSpec:
    """A version as typed: exact (``2.4.1``, ``2.0.0-rc1``) or a prefix (``2.4``, ``v2``)."""

    typed: str
    release: tuple[int, ...]
    exact: Version | None

    @classmethod
    def parse(cls, typed: str) -> VersionSpec | None:
        text = typed.lower().removeprefix("v")
        text = re.sub(r"\.[x*]$", "", text)
        wildcard = text != typed.lower().removeprefix("v")
        try:
            version = Version(text)
        except InvalidVersion:
            return None
        release = version.release
        exact = version if (version.pre or version.dev or len(release) >= 3) else None
        if wildcard:
            exact = None
        return cls(typed, tuple(release), exact)

    def matches(self, item: CatalogItem) -> bool:
        """Whether the catalog entry has this version."""
        return self.matches_version(item.parsed_version)

    def matches_version(self, version: Version) -> bool:
        """Whether ``version`` is this version, or starts with this prefix."""
        if self.exact is not None:
            return version == self.exact
        return version.release[: len(self.release)] == self.release


def runs(typed: str, running: Sequence[str]) -> bool:
    """Whether a version as typed (``1.8``, ``1.8.0``) is one of the versions ``running``."""
    spec = VersionSpec.parse(typed)
    return spec is None or any(spec.matches_version(parse_version(v)) for v in running)


def newest_release(items: Sequence[CatalogItem]) -> CatalogItem | None:
    releases = [i for i in items if not i.prerelease]
    return max(releases, key=lambda i: i.parsed_version) if releases else None


def versions_text(items: Sequence[CatalogItem]) -> str:
    return ", ".join(i.version for i in items)

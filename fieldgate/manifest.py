"""Module manifests: what the factory ships and what a device needs to run it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from fieldgate.contract import ApiVersion, Contract, VersionRange, VersionStr
from fieldgate.signing import SigningKey, key_id_of, verify

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
"""A lower-case identifier: letters, digits and hyphens."""

Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
"""An artifact digest: ``sha256:`` and 64 lower-case hex digits."""


class SafetyClass(StrEnum):
    """How much harm a bad version of the module can do in the field."""

    none = "none"
    low = "low"
    high = "high"
    critical = "critical"


class Requirement(Contract):
    """A module that must be installed on the device, in a version range."""

    module: Name
    """Name of the module required on the device."""
    range: VersionRange
    """Versions of it that satisfy the requirement, e.g. ``>=3.2,<4``."""


class Interface(Contract):
    """A named, versioned interface a module provides or consumes."""

    name: str = Field(min_length=1)
    """Interface name, e.g. ``modbus-tcp`` or ``telemetry``."""
    version: VersionStr
    """Interface version."""


class Artifact(Contract):
    """The built artifact of one module version and the factory's signature over it."""

    uri: str = Field(min_length=1)
    """Where the artifact is fetched from."""
    digest: Digest
    """sha256 of the artifact as built in the factory."""
    size_bytes: int = Field(default=0, ge=0)
    """Size of the artifact in bytes."""
    signature: str | None = None
    """Base64 ed25519 signature by the factory key over the whole manifest's canonical JSON
    (every field but this one and ``signer``)."""
    signer: str | None = None
    """Key id of the factory key that signed, e.g. ``ed25519:0123abcd…``."""


UNSIGNED_FIELDS = {"artifact": {"signature", "signer"}}
"""The only manifest fields outside the factory signature: the signature and the signer's id."""

CHANGED_AFTER_SIGNING = "the signature does not cover this manifest: a signed field was changed"
"""Why a present signature by a trusted key fails (ed25519 cannot tell which field changed)."""


class ModuleFacts(Contract):
    """What a module version is and needs, shared by the full and the compact manifest."""

    name: Name
    """Module name, e.g. ``hvac-controller``."""
    version: VersionStr
    """Version of this build (semver, prereleases like ``2.0.0-rc1`` allowed)."""
    description: str = ""
    """Free text from the factory. Untrusted: shown to people and models as data only."""
    safety: SafetyClass
    """Safety class: none, low, high or critical."""
    device_classes: list[Name] = Field(min_length=1)
    """Device classes the module runs on."""
    arch: list[str] = Field(min_length=1)
    """CPU architectures the artifact is built for."""
    min_memory_mb: int = Field(default=0, ge=0)
    """Least device memory needed, in MiB."""
    requires: list[Requirement] = []
    """Modules that must be installed on the device, with version ranges."""
    provides: list[Interface] = []
    """Interfaces this module provides."""
    consumes: list[Interface] = []
    """Interfaces this module consumes."""
    downgrade_allowed: bool = False
    """Whether a device running a newer version may be moved to this one."""

    @field_validator("requires")
    @classmethod
    def _unique_requirements(cls, value: list[Requirement]) -> list[Requirement]:
        names = [r.module for r in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"module {dupes[0]!r} is required more than once")
        return value


class ModuleManifest(ModuleFacts):
    """One version of a module: identity, artifact, safety class, hardware and dependencies."""

    apiVersion: ApiVersion = "fieldgate/v1"
    """Contract version."""
    kind: Literal["Module"] = "Module"
    """Document kind."""
    artifact: Artifact
    """The artifact and its signature."""

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def signing_payload(self) -> dict[str, Any]:
        """What the factory key signs: the manifest's canonical JSON without signature and signer.

        Every field policy or the executor reads is in it (safety class, downgrade, requires,
        hardware, interfaces, description, artifact uri, digest and size, name, version), so
        editing any of them after signing breaks the signature.
        """
        return self.model_dump(mode="json", exclude=UNSIGNED_FIELDS)

    def signed_with(self, key: SigningKey) -> ModuleManifest:
        """Return this manifest signed by ``key`` (signer set to its key id)."""
        signature = key.sign(self.signing_payload())
        artifact = self.artifact.model_copy(update={"signature": signature, "signer": key.key_id})
        return self.model_copy(update={"artifact": artifact})

    def signature_problem(self, trusted_keys: Mapping[str, str]) -> str | None:
        """Say why the factory signature does not count, or None when it does.

        Args:
            trusted_keys: Public keys (base64) by key id that may sign manifests.

        Returns:
            None when a trusted key signed exactly this manifest; otherwise the reason,
            e.g. ``unsigned`` or that a signed field was changed.
        """
        artifact = self.artifact
        if not artifact.signature:
            return "unsigned"
        if not artifact.signer:
            return "signed, but the manifest names no signer key"
        public = trusted_keys.get(artifact.signer)
        if public is None:
            return f"signer {artifact.signer} is not an enrolled factory key"
        if key_id_of(public) != artifact.signer:
            return f"the trusted key listed as {artifact.signer} has another key id"
        if verify(public, self.signing_payload(), artifact.signature):
            return None
        legacy = {"name": self.name, "version": self.version, "digest": artifact.digest}
        if verify(public, legacy, artifact.signature):
            return (
                "the signature covers only name, version and digest (the old form), not this "
                "manifest: the factory must sign the whole manifest again"
            )
        return f"{CHANGED_AFTER_SIGNING} after signing, or the signature is not {artifact.signer}'s"


def sample_digest(name: str, version: str) -> str:
    """Digest of the stand-in artifact content used for sample data and scenarios."""
    return "sha256:" + hashlib.sha256(f"artifact {name}@{version}".encode()).hexdigest()


class CatalogEntry(ModuleFacts):
    """The compact manifest form used in scenarios: ``signed`` and ``digest_mismatch`` describe
    the artifact instead of a real digest and signature."""

    signed: bool = True
    """Whether the factory signed the artifact."""
    digest_mismatch: bool = False
    """Whether the artifact held by the control plane differs from the signed digest."""

    def to_manifest(self, factory_key: SigningKey) -> tuple[ModuleManifest, str]:
        """Build the full manifest, signed by ``factory_key`` when ``signed``.

        Returns:
            The manifest and the digest the artifact store observes for it.
        """
        digest = sample_digest(self.name, self.version)
        fields = self.model_dump(exclude={"signed", "digest_mismatch"})
        unsigned = ModuleManifest.model_validate(
            {
                **fields,
                "artifact": {"uri": f"sample://{self.name}/{self.version}", "digest": digest},
            }
        )
        manifest = unsigned.signed_with(factory_key) if self.signed else unsigned
        observed = digest
        if self.digest_mismatch:
            observed = (
                "sha256:"
                + hashlib.sha256(f"tampered {self.name}@{self.version}".encode()).hexdigest()
            )
        return manifest, observed


class CatalogFile(Contract):
    """A file of module manifests for ``fieldgate catalog import``."""

    apiVersion: ApiVersion = "fieldgate/v1"
    """Contract version."""
    kind: Literal["Catalog"] = "Catalog"
    """Document kind."""
    signers: dict[str, str] = {}
    """Factory public keys (base64) by key id that the file's signatures claim; trust is decided
    by the store, not by this field."""
    modules: list[ModuleManifest] = Field(min_length=1)
    """The manifests."""

    @model_validator(mode="after")
    def _unique_versions(self) -> CatalogFile:
        seen: set[str] = set()
        for index, module in enumerate(self.modules):
            if module.ref in seen:
                raise ValueError(f"modules[{index}]: {module.ref} is listed twice")
            seen.add(module.ref)
        return self

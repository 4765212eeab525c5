"""The sample catalog and fleet shipped with fieldgate, and the demo factory key that signed it.

The shipped file stays signed by the demo factory key, whose seed is public: scenario and
test code may use it, but no deployment trusts it. ``fieldgate init`` and ``fieldgate demo``
sign the sample again with a throwaway factory key (:data:`SAMPLE_FACTORY_OWNER`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fieldgate.contract import load_yaml
from fieldgate.errors import InventoryInvalid, ManifestInvalid
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import CatalogFile
from fieldgate.signing import SigningKey

DEMO_FACTORY_OWNER = "factory-demo"
DEMO_FACTORY_SEED = b"fieldgate demo factory key"

SAMPLE_FACTORY_OWNER = "factory-sample"
"""Owner of the throwaway factory key that ``init`` makes to sign the sample catalog."""


def demo_factory_key() -> SigningKey:
    """The key the sample catalog is signed with. Public knowledge: never trust it in production."""
    return SigningKey.from_seed(DEMO_FACTORY_OWNER, DEMO_FACTORY_SEED)


def sample_path(name: str) -> Path:
    """Path of a shipped sample file (``catalog.yaml`` or ``fleet.yaml``)."""
    return Path(str(resources.files("fieldgate.data").joinpath(name)))


@dataclass(frozen=True)
class SampleData:
    """The parsed sample files."""

    catalog: CatalogFile
    fleet: FleetInventory


def load_sample() -> SampleData:
    """Read the shipped sample catalog and fleet."""
    catalog = load_yaml(sample_path("catalog.yaml"), CatalogFile, ManifestInvalid)
    fleet = load_yaml(sample_path("fleet.yaml"), FleetInventory, InventoryInvalid)
    return SampleData(catalog, fleet)

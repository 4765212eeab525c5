"""What several commands share: opening the store, reading contract files, the acting user."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from fieldgate.contract import read_yaml, validate_as
from fieldgate.errors import InventoryInvalid, ManifestInvalid
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import CatalogFile, ModuleManifest
from fieldgate.store import Store


def open_store(db: str | None) -> Store:
    """Open the database from ``--db`` or ``FIELDGATE_DB``."""
    return Store.open(db)


def current_user() -> str:
    """Who runs the command (``FIELDGATE_USER``, else the login name)."""
    return os.environ.get("FIELDGATE_USER") or getpass.getuser()


def read_catalog_file(path: Path) -> list[ModuleManifest]:
    """Read a catalog file (``kind: Catalog``) or a single manifest (``kind: Module``)."""
    data = read_yaml(path, ManifestInvalid)
    if isinstance(data, dict) and data.get("kind", "Catalog") == "Module":
        return [validate_as(ModuleManifest, data, str(path), ManifestInvalid)]
    return list(validate_as(CatalogFile, data, str(path), ManifestInvalid).modules)


def read_inventory_file(path: Path) -> FleetInventory:
    """Read a fleet inventory file."""
    return validate_as(
        FleetInventory, read_yaml(path, InventoryInvalid), str(path), InventoryInvalid
    )

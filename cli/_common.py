"""What several commands share: their settings, the store, contract files, the acting user."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fieldgate.audit import ActorKind, EventKind
from fieldgate.config import Config
from fieldgate.contract import read_yaml, validate_as
from fieldgate.errors import InventoryInvalid, ManifestInvalid
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import CatalogFile, ModuleManifest
from fieldgate.store import Store


def command_config(db: str | None = None, model: str | None = None) -> Config:
    """The settings of one command: the environment's, with its ``--db`` and ``--model``."""
    return Config.from_env().choosing(db=db, model=model)


def open_store(db: str | None) -> Store:
    """Open the database from ``--db`` or ``FIELDGATE_DB``."""
    return Store.open(command_config(db).database_url)


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


def file_digest(path: Path) -> str:
    """``sha256:`` and the hex digest of a file's bytes, for the audit record of an import."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def audit_change(store: Store, kind: EventKind, actor: str, payload: dict[str, Any]) -> None:
    """Audit a change a person made from the command line (an import, a seed)."""
    store.audit.append(kind, ActorKind.human, actor, payload)

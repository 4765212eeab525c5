"""The layering contract names every core module, so a new one cannot slip past it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"cli", "evals", "graphs", "agents", "tools"}


def test_the_core_contract_lists_every_core_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (core,) = [c for c in config["contracts"] if c["type"] == "forbidden"]
    on_disk = {
        f"fieldgate.{path.stem}"
        for path in (ROOT / "fieldgate").iterdir()
        if not path.is_symlink()  # the links to cli/, agents/, ... (the layers)
        and (
            (path.suffix == ".py" and path.stem != "__init__")
            or (path.is_dir() and (path / "__init__.py").exists())
        )
    } | {"fieldgate.policies"}
    assert set(core["source_modules"]) == on_disk
    assert set(core["forbidden_modules"]) == {f"fieldgate.{layer}" for layer in LAYERS}
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert set(layers["layers"]) == LAYERS

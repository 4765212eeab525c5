"""Sign the shipped sample catalog again with the demo factory key (maintainers only).

The demo key's seed is public, so no deployment trusts it: ``fieldgate init`` and
``fieldgate demo`` sign the sample again with a throwaway factory key they enroll and
then drop. The shipped file keeps the demo key's signatures for scenarios, tests and
``policy eval --catalog``, which check a file against its own ``signers``.

Run it after editing any manifest in ``fieldgate/data/catalog.yaml``: every field of a
manifest is signed, so an edited one no longer verifies until it is signed again. ed25519
signatures are deterministic, so running it twice gives the same file, and ``--check``
(for CI) exits 1 when the file is not signed as it would be.

    .venv/bin/python scripts/resign_sample_catalog.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from fieldgate.contract import load_yaml
from fieldgate.errors import ManifestInvalid
from fieldgate.manifest import CatalogFile
from fieldgate.sample import DEMO_FACTORY_SEED, demo_factory_key

CATALOG = Path(__file__).resolve().parents[1] / "fieldgate" / "data" / "catalog.yaml"
"""The checkout's sample catalog (not the installed copy)."""

HEADER = (
    "# Sample module catalog shipped with fieldgate.\n"
    f"# Signed by the demo factory key (seed: {DEMO_FACTORY_SEED.decode()!r}); "
    "never trust it in production.\n"
    "# fieldgate init and demo sign it again with a throwaway factory key and never trust\n"
    "# the demo key.\n"
    "# Every field of a manifest but artifact.signature and artifact.signer is signed:\n"
    "# after an edit, run scripts/resign_sample_catalog.py.\n"
)


def _readable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's fields with apiVersion and kind first, as a person writes them."""
    return {"apiVersion": manifest.pop("apiVersion"), "kind": manifest.pop("kind"), **manifest}


def resigned_text() -> str:
    """The sample catalog with every manifest signed by the demo factory key, as YAML text."""
    catalog = load_yaml(CATALOG, CatalogFile, ManifestInvalid)
    key = demo_factory_key()
    # the old signature and signer are outside what is signed, so signing overwrites them
    modules = [_readable(m.signed_with(key).model_dump(mode="json")) for m in catalog.modules]
    document = {
        "apiVersion": catalog.apiVersion,
        "kind": catalog.kind,
        "signers": {key.key_id: key.public_b64},
        "modules": modules,
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the sample catalog signed (or, with ``--check``, say whether it is)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only tell whether the file is signed as it would be"
    )
    args = parser.parse_args(argv)
    path = CATALOG
    text = resigned_text()
    if path.read_text(encoding="utf-8") == text:
        print(f"{path}: signed, unchanged")
        return 0
    if args.check:
        print(f"{path}: not signed as it would be; run scripts/resign_sample_catalog.py")
        return 1
    path.write_text(text, encoding="utf-8")
    print(f"{path}: signed again with {demo_factory_key().key_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

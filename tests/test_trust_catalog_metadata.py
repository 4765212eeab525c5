"""Attacks on the catalog's TUF metadata, and what ``init`` trusts.

A factory publishes its catalog as a TUF repository (``catalog publish``); the control
plane imports it (``catalog import DIR``) only when python-tuf's Metadata API verifies it
against the metadata already held, signed by enrolled factory keys. Each attack below is
refused with its named reason, exit 2, and leaves the catalog and the held metadata as
they were. Real SQLite and PostgreSQL (``initialised_db``), through the CLI.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.config import Config
from fieldgate.keyfiles import save_key
from fieldgate.manifest import ModuleManifest, sample_digest
from fieldgate.sample import demo_factory_key
from fieldgate.signing import SigningKey
from fieldgate.store import Store

runner = CliRunner()

FACTORY_A = SigningKey.from_seed("factory-a", b"catalog test factory a")
FACTORY_B = SigningKey.from_seed("factory-b", b"catalog test factory b")
APPROVER = SigningKey.from_seed("eng-ana", b"catalog test approver")
STRANGER = SigningKey.from_seed("factory-x", b"catalog test unenrolled")


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def unsigned_manifest(name: str, version: str, **fields: Any) -> ModuleManifest:
    return ModuleManifest.model_validate(
        {
            "name": name,
            "version": version,
            "safety": "high",
            "device_classes": ["hvac-gw"],
            "arch": ["arm64"],
            "artifact": {
                "uri": f"sample://{name}/{version}",
                "digest": sample_digest(name, version),
                "size_bytes": 2048,
            },
            **fields,
        }
    )


MANIFESTS = [unsigned_manifest("tuf-mod", "1.0.0"), unsigned_manifest("tuf-mod", "1.1.0")]


@pytest.fixture
def home(initialised_db: str, tmp_path: Path) -> Path:
    """The initialised deployment with factory-a and factory-b enrolled (their private keys
    in this home, for ``catalog publish``), eng-ana's approver key enrolled, and factory-x's
    key here but never enrolled; returns the catalog YAML to publish."""
    keys_dir = Config.from_env().keys_dir
    for key in (FACTORY_A, FACTORY_B, APPROVER, STRANGER):
        save_key(keys_dir, key)
    for key, purpose in ((FACTORY_A, "factory"), (FACTORY_B, "factory"), (APPROVER, "approver")):
        code, out = invoke(
            "keys", "enroll", key.owner, "--purpose", purpose, "--public-key", key.public_b64
        )
        assert code == 0 and "trusted" in out, out
    catalog = tmp_path / "catalog.yaml"
    document = {"kind": "Catalog", "modules": [m.model_dump(mode="json") for m in MANIFESTS]}
    catalog.write_text(yaml.safe_dump(document), encoding="utf-8")
    return catalog


def publish(catalog: Path, repo: Path, *owners: str, threshold: int = 1) -> None:
    keys = [arg for owner in owners for arg in ("--key", owner)]
    args = ["catalog", "publish", str(catalog), "--out", str(repo), *keys]
    code, out = invoke(*args, "--threshold", str(threshold))
    assert code == 0, out


def stored(db_url: str) -> tuple[list[str], list[tuple[str, str, int]], int]:
    """The catalog's refs, the held metadata (repository, role, version), the audit length."""
    with Store.open(db_url) as store:
        refs = [r.ref for r in store.catalog.list()]
        return refs, store.catalog.held_versions(), len(store.audit.events())


def refused(db_url: str, repo: Path, reason: str, where: str) -> str:
    """Import ``repo``: it must be refused for ``reason`` naming ``where``, storing nothing."""
    before = stored(db_url)
    code, out = invoke("catalog", "import", str(repo))
    assert code == 2, out
    assert f"{where}: refused ({reason}):" in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert stored(db_url) == before
    return out


def metadata(repo: Path, role: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((repo / "metadata" / f"{role}.json").read_text())
    return loaded


def resign(repo: Path, role: str, keys: list[SigningKey], change: Any) -> bytes:
    """Apply ``change`` to ``role``'s signed metadata, sign it with ``keys``, write it back."""
    from tuf.api.metadata import Metadata

    from fieldgate.catalog_metadata import tuf_key

    path = repo / "metadata" / f"{role}.json"
    md: Metadata[Any] = Metadata.from_file(str(path))
    change(md.signed)
    md.signatures.clear()
    from securesystemslib.signer import CryptoSigner

    for key in keys:
        md.sign(CryptoSigner(key.private, tuf_key(key.public_b64)), append=True)
    data = md.to_bytes()
    path.write_bytes(data)
    return data


def test_a_published_repository_imports_and_republishing_moves_every_version_on(
    home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, "factory-a")
    code, out = invoke("catalog", "import", str(repo))
    assert code == 0 and "2 added" in out and "warning" not in out, out
    with Store.open(initialised_db) as store:
        record = store.catalog.record("tuf-mod", "1.1.0")
        assert record.signature_valid and "signed by factory-a" in record.signature_note
        held = {(role, v) for _, role, v in store.catalog.held_versions()}
    assert {("root", 1), ("timestamp", 1), ("snapshot", 1), ("targets", 1)} <= held
    target = json.loads((repo / "targets/manifests/tuf-mod/1.1.0.json").read_text())
    listed = metadata(repo, "targets")["signed"]["targets"]["manifests/tuf-mod/1.1.0.json"]
    assert listed["custom"]["artifact"]["length"] == 2048 == target["artifact"]["size_bytes"]

    publish(home, repo, "factory-a")
    versions = {
        role: metadata(repo, role)["signed"]["version"] for role in ("timestamp", "targets")
    }
    assert versions == {"timestamp": 2, "targets": 2}
    code, out = invoke("catalog", "import", str(repo))
    assert code == 0 and "0 added, 2 unchanged" in out, out
    with Store.open(initialised_db) as store:
        held = {(role, v) for _, role, v in store.catalog.held_versions()}
    assert ("timestamp", 2) in held and ("targets", 2) in held


def test_a_root_rotation_is_signed_by_the_old_root_and_the_new_one(
    home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, "factory-a")
    assert invoke("catalog", "import", str(repo))[0] == 0
    publish(home, repo, "factory-a", "factory-b", threshold=2)
    assert (repo / "metadata/2.root.json").exists()
    code, out = invoke("catalog", "import", str(repo))
    assert code == 0, out
    with Store.open(initialised_db) as store:
        assert ("root", 2) in {(role, v) for _, role, v in store.catalog.held_versions()}


def test_an_edited_field_in_a_manifest_target_is_refused(
    home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, "factory-a")
    target = repo / "targets/manifests/tuf-mod/1.1.0.json"
    target.write_text(target.read_text().replace('"safety":"high"', '"safety":"none"'))
    refused(initialised_db, repo, "target-mismatch", "targets/manifests/tuf-mod/1.1.0.json")


def test_an_edited_manifest_with_metadata_made_again_is_refused_by_its_own_signature(
    home: Path, initialised_db: str, tmp_path: Path
) -> None:
    from fieldgate.catalog_metadata import publish_repository

    signed = [m.signed_with(FACTORY_A) for m in MANIFESTS]
    fields = signed[1].model_dump(mode="json")
    fields["safety"] = "none"  # the factory signature over the manifest is kept as it was
    edited = [signed[0], ModuleManifest.model_validate(fields)]
    repo = tmp_path / "repo"
    publish_repository(repo, edited, [FACTORY_A], 1, timedelta(days=5), datetime.now(UTC))
    out = refused(initialised_db, repo, "edited", "targets/manifests/tuf-mod/1.1.0.json")
    assert "a signed field was changed" in out


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_a_rollback_to_older_metadata_is_refused(
    role: str, home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo, old = tmp_path / "repo", tmp_path / "old"
    publish(home, repo, "factory-a")
    shutil.copytree(repo, old)
    publish(home, repo, "factory-a")
    assert invoke("catalog", "import", str(repo))[0] == 0
    if role != "timestamp":
        # A timestamp key holder points a fresh timestamp (and snapshot) at the old file.
        from tuf.api.metadata import MetaFile

        def meta_of(name: str, source: Path) -> MetaFile:
            data = (source / "metadata" / name).read_bytes()
            version = json.loads(data)["signed"]["version"]
            return MetaFile.from_data(version, data, ["sha256"])

        shutil.copy(old / f"metadata/{role}.json", repo / f"metadata/{role}.json")
        if role == "targets":

            def point_at_old_targets(signed: Any) -> None:
                signed.version += 1
                signed.meta["targets.json"] = meta_of("targets.json", old)

            resign(repo, "snapshot", [FACTORY_A], point_at_old_targets)

        def point_at_snapshot(signed: Any) -> None:
            signed.version += 1
            signed.snapshot_meta = meta_of("snapshot.json", repo)

        resign(repo, "timestamp", [FACTORY_A], point_at_snapshot)
        refused(initialised_db, repo, "rollback", f"metadata/{role}.json")
    else:
        refused(initialised_db, old, "rollback", "metadata/timestamp.json")


def test_an_expired_timestamp_is_refused(home: Path, initialised_db: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, "factory-a")

    def expire(signed: Any) -> None:
        signed.version += 1
        signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    resign(repo, "timestamp", [FACTORY_A], expire)
    refused(initialised_db, repo, "expired", "metadata/timestamp.json")


def test_fewer_signatures_than_the_threshold_are_refused(
    home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, "factory-a", "factory-b", threshold=2)
    resign(repo, "timestamp", [FACTORY_A], lambda signed: None)  # factory-b's signature dropped
    out = refused(initialised_db, repo, "threshold", "metadata/timestamp.json")
    assert "1 valid signature(s)" in out and "requires 2" in out


@pytest.mark.parametrize("owner", ["eng-ana", "factory-x"], ids=["approver-key", "unenrolled-key"])
def test_a_catalog_signed_by_a_key_that_is_not_an_enrolled_factory_key_is_refused(
    owner: str, home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, owner)
    out = refused(initialised_db, repo, "unenrolled-key", "metadata/1.root.json")
    assert "not an enrolled factory key" in out


def test_targets_signed_by_an_approver_key_are_refused(
    home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, "factory-a")
    assert invoke("catalog", "import", str(repo))[0] == 0
    publish(home, repo, "factory-a")
    resign(repo, "timestamp", [APPROVER], lambda signed: None)
    out = refused(initialised_db, repo, "unenrolled-key", "metadata/timestamp.json")
    assert APPROVER.key_id in out


def test_a_revoked_factory_key_signs_no_more_catalogs(
    home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, "factory-a")
    assert invoke("catalog", "import", str(repo))[0] == 0
    code, out = invoke("keys", "revoke", FACTORY_A.key_id, "--reason", "factory-a was breached")
    assert code == 0, out
    publish(home, repo, "factory-a")
    refused(initialised_db, repo, "unenrolled-key", "metadata/root.json")


@pytest.mark.parametrize("change", ["size", "digest"])
def test_a_target_whose_size_or_digest_does_not_match_is_refused(
    change: str, home: Path, initialised_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(home, repo, "factory-a")
    target = repo / "targets/manifests/tuf-mod/1.0.0.json"
    data = target.read_bytes()
    # the same length with one byte changed, or the file with bytes added (endless data)
    target.write_bytes(data.replace(b"tuf-mod", b"tuf-mud", 1) if change == "digest" else data * 2)
    out = refused(initialised_db, repo, "target-mismatch", "targets/manifests/tuf-mod/1.0.0.json")
    assert ("length" in out) == (change == "size"), out


# -- what init trusts -------------------------------------------------------------------------


def test_init_trusts_no_built_in_key(initialised_db: str, tmp_path: Path) -> None:
    """A manifest signed by the public demo key is not signed after init; D1 denies it."""
    demo = demo_factory_key()
    manifest = unsigned_manifest("hvac-controller", "2.5.0").signed_with(demo)
    manifest = manifest.model_copy(
        update={"requires": [], "description": "Supervisory HVAC control loops."}
    ).signed_with(demo)
    catalog = tmp_path / "demo-signed.yaml"
    document = {
        "kind": "Catalog",
        "signers": {demo.key_id: demo.public_b64},
        "modules": [manifest.model_dump(mode="json")],
    }
    catalog.write_text(yaml.safe_dump(document), encoding="utf-8")
    code, out = invoke("catalog", "import", str(catalog))
    assert code == 0 and "is not an enrolled factory key" in out, out
    with Store.open(initialised_db) as store:
        assert not store.catalog.record("hvac-controller", "2.5.0").signature_valid
        trust = store.keys.judge(store.keys.roots()[0])
        assert demo.key_id not in trust.trusted_keys("factory")
        sample = [r.signature_note for r in store.catalog.list() if r.ref != manifest.ref]
    assert sample and all(note.startswith("signed by factory-sample") for note in sample)
    # the throwaway key that signed the sample was never written down
    keys_dir = Config.from_env().keys_dir
    assert not list(keys_dir.glob("factory-sample*"))

    result = runner.invoke(
        app, ["chat", "--as", "eng-ana"], input="Roll out hvac-controller 2.5.0 to muc-01\n"
    )
    assert result.exit_code == 0, result.output
    assert "policy: denied" in result.output, result.output
    assert "not signed by a trusted factory key" in result.output, result.output


def test_the_demo_runs_on_the_sample_signed_by_its_throwaway_key() -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "23 signed manifests" in result.output
    assert "audit chain" in result.output.lower() or "verified" in result.output.lower()

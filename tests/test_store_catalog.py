"""Trusted keys and the module catalog on real SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fieldgate.errors import ManifestInvalid, NotFound, StoreError
from fieldgate.keyfiles import enroll_with
from fieldgate.manifest import ModuleManifest, sample_digest
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.store._catalog import CatalogImportRow, ManifestRow
from fieldgate.trust import StoredKey, new_root

FACTORY = SigningKey.from_seed("factory-berlin", b"factory")
STRANGER = SigningKey.from_seed("someone-else", b"stranger")
ROOT_KEY = SigningKey.from_seed("adm", b"root")


def enrolled_factory(store: Store) -> dict[str, StoredKey]:
    """Enroll FACTORY under a root of trust; return the trusted factory keys."""
    root = new_root({"adm": ROOT_KEY}, 1, datetime.now(UTC))
    store.keys.add_root(root)
    enroll_with(store, root, ROOT_KEY, "factory-berlin", "factory", FACTORY.public_b64)
    return store.keys.judge(root).trusted_keys("factory")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened


def manifest(
    name: str = "hvac-controller",
    version: str = "2.4.1",
    key: SigningKey | None = FACTORY,
    uri: str | None = None,
    digest: str | None = None,
    **fields: object,
) -> ModuleManifest:
    unsigned = ModuleManifest.model_validate(
        {
            "name": name,
            "version": version,
            "safety": "high",
            "device_classes": ["hvac-gw"],
            "arch": ["arm64"],
            "artifact": {
                "uri": uri or f"oci://factory/{name}:{version}",
                "digest": digest or sample_digest(name, version),
            },
            **fields,
        }
    )
    return unsigned if key is None else unsigned.signed_with(key)


def counts(store: Store) -> tuple[int, int]:
    with store.engine.connect() as conn:
        imports = conn.execute(select(func.count()).select_from(CatalogImportRow)).scalar_one()
        manifests = conn.execute(select(func.count()).select_from(ManifestRow)).scalar_one()
    return imports, manifests


# -- keys ------------------------------------------------------------------------------------


def test_trust_get_and_list_keys(store: Store) -> None:
    key = store.keys.trust("factory-berlin", FACTORY.public_b64, "factory")
    assert key.key_id == FACTORY.key_id
    assert store.keys.trust("factory-berlin", FACTORY.public_b64, "factory") == key
    assert store.keys.get(FACTORY.key_id) == key
    approver = SigningKey.from_seed("ana", b"ana")
    store.keys.trust("ana", approver.public_b64, "approver")
    assert store.keys.for_owner("ana", "approver")[0].public_b64 == approver.public_b64
    assert store.keys.for_owner("ana", "factory") == []
    assert [k.owner for k in store.keys.for_owner("factory-berlin")] == ["factory-berlin"]
    assert key.added_at.tzinfo is not None


def test_key_mistakes_are_named(store: Store) -> None:
    store.keys.trust("factory-berlin", FACTORY.public_b64, "factory")
    with pytest.raises(StoreError, match="already trusted as factory-berlin's factory key"):
        store.keys.trust("mallory", FACTORY.public_b64, "approver")
    with pytest.raises(StoreError, match="not an ed25519 public key"):
        store.keys.trust("bo", "bm90IGEga2V5", "approver")
    with pytest.raises(StoreError, match="purpose 'root'"):
        store.keys.trust("bo", STRANGER.public_b64, "root")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="purpose 'artifact'"):  # the retired unsigned purpose
        store.keys.trust("bo", STRANGER.public_b64, "artifact")  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="ed25519:0000000000000000 is not trusted"):
        store.keys.get("ed25519:0000000000000000")


# -- catalog ---------------------------------------------------------------------------------


def test_import_records_provenance_and_verifies_signatures(store: Store) -> None:
    factory = enrolled_factory(store)
    bad_signature = manifest(version="2.4.2")
    bad_signature = bad_signature.model_copy(
        update={
            "artifact": bad_signature.artifact.model_copy(
                update={"signature": manifest(version="2.4.3").artifact.signature}
            )
        }
    )
    batch = [
        (manifest(), None),
        (bad_signature, None),
        (manifest(version="2.5.0", key=STRANGER), None),
        (manifest(version="2.6.0", key=None), "sha256:" + "ab" * 32),
    ]
    result = store.catalog.import_manifests(
        batch, source="catalog/hvac.yaml", actor="ana", factory_keys=factory
    )
    assert result.added == [
        "hvac-controller@2.4.1",
        "hvac-controller@2.4.2",
        "hvac-controller@2.5.0",
        "hvac-controller@2.6.0",
    ]
    assert result.unchanged == []

    signed = store.catalog.record("hvac-controller", "2.4.1")
    assert signed.manifest == manifest()
    assert (signed.import_id, signed.source, signed.actor) == (
        result.import_id,
        "catalog/hvac.yaml",
        "ana",
    )
    assert signed.imported_at.tzinfo is not None
    assert signed.signature_valid
    assert FACTORY.key_id in signed.signature_note
    assert signed.digest_matches

    assert not store.catalog.record("hvac-controller", "2.4.2").signature_valid
    stranger = store.catalog.record("hvac-controller", "2.5.0")
    assert not stranger.signature_valid
    assert "not an enrolled factory key" in stranger.signature_note
    unsigned = store.catalog.record("hvac-controller", "2.6.0")
    assert (unsigned.signature_valid, unsigned.signature_note) == (False, "unsigned")
    assert unsigned.observed_digest == "sha256:" + "ab" * 32
    assert not unsigned.digest_matches


def test_file_artifacts_are_hashed_at_import(store: Store, tmp_path: Path) -> None:
    artifact = tmp_path / "pump-logic-1.9.0.tar"
    artifact.write_bytes(b"the real artifact")
    declared = "sha256:" + hashlib.sha256(b"the real artifact").hexdigest()
    good = manifest("pump-logic", "1.9.0", uri=artifact.as_uri(), digest=declared)
    swapped = tmp_path / "pump-logic-1.9.1.tar"
    swapped.write_bytes(b"something else")
    bad = manifest("pump-logic", "1.9.1", uri=swapped.as_uri(), digest=declared)
    store.catalog.import_manifests(
        [(good, None), (bad, declared)], source="pumps.yaml", actor="ana"
    )
    assert store.catalog.record("pump-logic", "1.9.0").digest_matches
    tampered = store.catalog.record("pump-logic", "1.9.1")
    assert not tampered.digest_matches, "a file:// artifact is measured, not taken on trust"
    assert tampered.observed_digest == "sha256:" + hashlib.sha256(b"something else").hexdigest()


def test_reimporting_the_same_manifest_is_a_no_op(store: Store) -> None:
    first = store.catalog.import_manifests([(manifest(), None)], source="a.yaml", actor="ana")
    again = store.catalog.import_manifests([(manifest(), None)], source="b.yaml", actor="bo")
    assert again.import_id is None
    assert (again.added, again.unchanged) == ([], ["hvac-controller@2.4.1"])
    assert store.catalog.record("hvac-controller", "2.4.1").import_id == first.import_id
    assert store.catalog.record("hvac-controller", "2.4.1").source == "a.yaml"
    assert counts(store) == (1, 1)


def test_a_changed_manifest_for_a_stored_version_is_refused_and_nothing_is_written(
    store: Store,
) -> None:
    store.catalog.import_manifests([(manifest(), None)], source="a.yaml", actor="ana")
    changed = manifest(description="now with more features")
    with pytest.raises(ManifestInvalid) as caught:
        store.catalog.import_manifests(
            [(manifest(version="3.0.0"), None), (changed, None)], source="b.yaml", actor="bo"
        )
    message = str(caught.value)
    assert "b.yaml" in message
    assert "module hvac-controller version 2.4.1 is already in the catalog" in message
    assert "immutable" in message
    assert counts(store) == (1, 1), "the whole import is rolled back"
    assert store.catalog.versions("hvac-controller") == ["2.4.1"]


def test_unreadable_file_artifact_fails_the_import(store: Store, tmp_path: Path) -> None:
    missing = manifest("pump-logic", "2.0.0", uri=(tmp_path / "gone.tar").as_uri())
    with pytest.raises(ManifestInvalid, match=r"pump-logic@2.0.0 artifact.uri: cannot read"):
        store.catalog.import_manifests(
            [(manifest(), None), (missing, None)], source="c.yaml", actor="ana"
        )
    assert counts(store) == (0, 0)


def test_the_same_version_twice_in_one_import_must_agree(store: Store) -> None:
    with pytest.raises(ManifestInvalid, match="listed twice with different content"):
        store.catalog.import_manifests(
            [(manifest(), None), (manifest(description="other"), None)], source="d.yaml", actor="a"
        )


def test_list_versions_get_and_not_found(store: Store) -> None:
    store.catalog.import_manifests(
        [(manifest(version=v), None) for v in ("1.10.0", "1.9.0", "2.0.0", "2.0.0-rc1")]
        + [(manifest("edge-runtime", "3.4.0"), None)],
        source="all.yaml",
        actor="ana",
    )
    assert store.catalog.versions("hvac-controller") == ["1.9.0", "1.10.0", "2.0.0-rc1", "2.0.0"]
    assert [r.ref for r in store.catalog.list()] == [
        "edge-runtime@3.4.0",
        "hvac-controller@1.9.0",
        "hvac-controller@1.10.0",
        "hvac-controller@2.0.0-rc1",
        "hvac-controller@2.0.0",
    ]
    assert store.catalog.get("edge-runtime", "3.4.0").name == "edge-runtime"
    with pytest.raises(NotFound, match=r"'hvac-controller' has no version '9.9.9'.*known: 1.9.0"):
        store.catalog.get("hvac-controller", "9.9.9")
    with pytest.raises(NotFound, match="module 'nope' is not in the catalog"):
        store.catalog.versions("nope")
    with pytest.raises(NotFound, match="module 'nope' is not in the catalog"):
        store.catalog.record("nope", "1.0.0")


def test_another_process_import_is_seen_at_the_next_read(store: Store, db_url: str) -> None:
    store.catalog.import_manifests([(manifest(version="1.0.0"), None)], source="a", actor="ana")
    assert store.catalog.versions("hvac-controller") == ["1.0.0"]
    # Another process (its own Store on the same database) imports a new version.
    with Store.open(db_url) as other:
        other.catalog.import_manifests([(manifest(version="1.1.0"), None)], source="b", actor="bo")
        assert other.catalog.versions("hvac-controller") == ["1.0.0", "1.1.0"]
    assert store.catalog.versions("hvac-controller") == ["1.0.0", "1.1.0"]
    assert store.catalog.record("hvac-controller", "1.1.0").source == "b"
    # An import that adds nothing leaves the catalog (and its revision) as it was.
    revision = store.catalog.revision()
    store.catalog.import_manifests([(manifest(version="1.1.0"), None)], source="c", actor="cy")
    assert store.catalog.revision() == revision
    assert [r.source for r in store.catalog.list()] == ["a", "b"]

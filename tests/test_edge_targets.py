"""A field device checks what it installs against the catalog's signed TUF targets itself.

The control plane's command names a digest; a compromised control plane could name the
digest of wrong software. A device with the catalog root pinned (python-tuf's
``Updater`` over the repository directory) refuses an artifact whose sha256 or length is
not what the factory's targets metadata records, even when the command's digest matches.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _edge_support import CONTROL, command

from fieldgate.catalog_metadata import export_repository, publish_repository
from fieldgate.commands import ReportStatus
from fieldgate.edge import DeviceStore, FieldDevice, digest_of, sample_artifact
from fieldgate.edge._artifacts import ArtifactSource
from fieldgate.edge._targets import CatalogTargets, pin_catalog_root
from fieldgate.edge._wire import encode
from fieldgate.manifest import ModuleManifest, sample_digest
from fieldgate.signing import SigningKey
from fieldgate.store import Store

DEVICE = "rtm-05-pump-ctl-01"
FACTORY = SigningKey.from_seed("factory-a", b"edge targets test factory")
REAL = sample_artifact("pump-logic", "1.9.0")


def manifest() -> ModuleManifest:
    return ModuleManifest.model_validate(
        {
            "name": "pump-logic",
            "version": "1.9.0",
            "safety": "low",
            "device_classes": ["pump-ctl"],
            "arch": ["arm64"],
            "artifact": {
                "uri": "sample://pump-logic/1.9.0",
                "digest": sample_digest("pump-logic", "1.9.0"),
                "size_bytes": len(REAL),
            },
        }
    ).signed_with(FACTORY)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    publish_repository(repo, [manifest()], [FACTORY], 1, timedelta(days=5), datetime.now(UTC))
    return repo


def device_with(tmp_path: Path, repo: Path, content: bytes, *, pin: bool = True) -> FieldDevice:
    state = tmp_path / "state"
    store = DeviceStore.open(state, DEVICE, site="rtm-05", installed={"pump-logic": "1.8.0"})
    if pin:
        pin_catalog_root(state, (repo / "metadata/1.root.json").read_bytes())
    artifacts = tmp_path / "artifacts" / "pump-logic"
    artifacts.mkdir(parents=True)
    (artifacts / "1.9.0").write_bytes(content)
    source = ArtifactSource(tmp_path / "artifacts", targets=CatalogTargets(repo, state))
    return FieldDevice(store, CONTROL.public_b64, artifacts=source)


def install(device: FieldDevice, content: bytes) -> tuple[ReportStatus, str]:
    # the command's digest is the fetched content's: only the catalog's targets can object
    report = device.handle(encode(command(DEVICE, digest=digest_of(content)))).report
    return report.status, report.reason


def test_the_signed_artifact_installs(tmp_path: Path, repo: Path) -> None:
    assert install(device_with(tmp_path, repo, REAL), REAL)[0] is ReportStatus.applied


def test_wrong_software_with_a_matching_command_digest_is_refused(
    tmp_path: Path, repo: Path
) -> None:
    wrong = b"artifact pump-logic@6.6.6"[: len(REAL)].ljust(len(REAL), b"!")
    status, detail = install(device_with(tmp_path, repo, wrong), wrong)
    assert status is ReportStatus.rejected
    assert "catalog targets: the artifact's sha256" in detail, detail


def test_endless_data_is_refused_by_its_signed_length(tmp_path: Path, repo: Path) -> None:
    endless = REAL + b"\0" * 100_000
    status, detail = install(device_with(tmp_path, repo, endless), endless)
    assert status is ReportStatus.rejected
    assert f"the catalog's signed targets say {len(REAL)}" in detail, detail


def test_tampered_targets_metadata_is_refused(tmp_path: Path, repo: Path) -> None:
    targets = repo / "metadata/targets.json"
    targets.write_text(targets.read_text().replace('"length":' + str(len(REAL)), '"length":1'))
    status, detail = install(device_with(tmp_path, repo, REAL), REAL)
    assert status is ReportStatus.rejected
    assert "does not verify" in detail, detail


def test_without_a_pinned_catalog_root_nothing_is_installed(tmp_path: Path, repo: Path) -> None:
    status, detail = install(device_with(tmp_path, repo, REAL, pin=False), REAL)
    assert status is ReportStatus.rejected and "no catalog root is pinned" in detail, detail


def test_an_endless_artifact_is_read_no_further_than_its_signed_length(
    tmp_path: Path, repo: Path
) -> None:
    device = device_with(tmp_path, repo, REAL)
    endless = tmp_path / "artifacts" / "pump-logic" / "1.9.0"
    endless.unlink()
    endless.symlink_to("/dev/zero")  # a source that never ends
    content = device.artifacts.fetch("pump-logic", "1.9.0")
    assert len(content) == len(REAL) + 1
    status, detail = install(device, b"\0" * (len(REAL) + 1))
    assert status is ReportStatus.rejected
    assert f"the catalog's signed targets say {len(REAL)}" in detail, detail


def test_the_repository_the_control_plane_holds_is_what_devices_verify_against(
    initialised_db: str, tmp_path: Path
) -> None:
    with Store.open(initialised_db) as store:
        (exported,) = export_repository(store, tmp_path / "catalog")
        manifest = store.catalog.get("pump-logic", "1.9.0")
    assert manifest.artifact.size_bytes == len(REAL), "init records the stand-ins' sizes"
    state = tmp_path / "state"
    store_ = DeviceStore.open(state, DEVICE, site="rtm-05", installed={"pump-logic": "1.8.0"})
    pin_catalog_root(state, (exported / "metadata/root.json").read_bytes())
    source = ArtifactSource(targets=CatalogTargets(exported, state))
    device = FieldDevice(store_, CONTROL.public_b64, artifacts=source)
    assert install(device, REAL)[0] is ReportStatus.applied
    # a target the factory never signed is refused, whatever the command says
    report = device.handle(
        encode(command(DEVICE, version="9.9.9", plan_id="pl-other", digest=digest_of(REAL)))
    ).report
    assert report.status is ReportStatus.rejected and "not a target" in report.reason

"""A field device checks what it installs against the catalog's signed TUF targets itself.

The control plane's command names a digest; a compromised control plane could name the
digest of wrong software. A device with the catalog root pinned (python-tuf's
``Updater`` over the repository directory) refuses an artifact whose sha256 or length is
not what the factory's targets metadata records, even when the command's digest matches.
"""

from __future__ import annotations

import sqlite3
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _edge_support import CONTROL, command, shared_broker

from fieldgate.catalog_metadata import export_repository, publish_repository
from fieldgate.commands import ReportStatus
from fieldgate.config import Config
from fieldgate.edge import (
    DeviceSpec,
    DeviceStore,
    FieldDevice,
    Gateway,
    HelloWatcher,
    LocalFleet,
    digest_of,
    sample_artifact,
)
from fieldgate.edge._artifacts import ArtifactSource
from fieldgate.edge._targets import CatalogTargets, pin_catalog_root
from fieldgate.edge._wire import encode
from fieldgate.keyfiles import control_plane_key
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
    assert report is not None
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
    assert report is not None
    assert report.status is ReportStatus.rejected and "not a target" in report.reason


@pytest.mark.mqtt
def test_field_agents_refuse_wrong_software_even_from_a_compromised_control_plane(
    initialised_db: str, tmp_path: Path
) -> None:
    """Agents started by the control plane get the catalog it verified; a command signed by
    the control plane's own key that names other software's digest is refused on the
    device, while the factory's artifact installs."""
    broker = shared_broker()
    wrong = b"artifact pump-logic@1.9.0, but not the factory's"
    for name, content in (("honest", REAL), ("wrong", wrong)):
        (tmp_path / name / "pump-logic").mkdir(parents=True)
        (tmp_path / name / "pump-logic" / "1.9.0").write_bytes(content)
    good, bad = "rtm-05-pump-ctl-01", "rtm-05-pump-ctl-02"
    with Store.open(initialised_db) as store, ExitStack() as stack:
        control = control_plane_key(store, Config.from_env().keys_dir)
        for device_id, source in ((good, "honest"), (bad, "wrong")):
            device = store.fleet.device(device_id)
            spec = DeviceSpec(device_id=device.id, site=device.site, installed=device.installed)
            fleet = LocalFleet(
                broker,
                tmp_path / f"agents-{source}",
                control.public_b64,
                [spec],
                artifacts=tmp_path / source,
                enroll_in=store,
            ).start()
            stack.callback(fleet.stop)
        with HelloWatcher(broker) as watcher:
            assert watcher.wait([good, bad], timeout=30)
        gateway = stack.enter_context(Gateway(store, broker, control_key=control.public_b64))
        honest = command(good, key=control, plan_id="pl-honest")
        forged = command(bad, key=control, plan_id="pl-forged", digest=digest_of(wrong))
        gateway.send([honest, forged])
        pending = {honest.command_id, forged.command_id}
        reports = {r.device_id: r for r in gateway.collect(pending, 30)}
    assert reports[good].status is ReportStatus.applied, reports[good].reason
    assert reports[bad].status is ReportStatus.rejected
    assert "catalog targets: the artifact" in reports[bad].reason, reports[bad].reason
    effects = sqlite3.connect(tmp_path / "agents-wrong" / f"{bad}.sqlite").execute(
        "SELECT count(*) FROM effects"
    )
    assert effects.fetchone() == (0,), "nothing ran on the device told to install wrong software"

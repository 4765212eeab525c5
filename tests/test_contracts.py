"""Contracts: strict loading, error messages, plan hashing, wave assignment, windows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fieldgate.contract import load_yaml, version_in_range
from fieldgate.errors import InventoryInvalid, ManifestInvalid, ScenarioInvalid
from fieldgate.fleet import FleetInventory, MaintenanceWindow, Site
from fieldgate.manifest import CatalogEntry, CatalogFile
from fieldgate.plan import HealthGate, RolloutPlan, Selector, Wave, assign_waves, select_devices
from fieldgate.scenario import load_scenario
from fieldgate.schemas import CONTRACTS, json_schema
from fieldgate.signing import SigningKey, verify

SHARED = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
DATA = Path(__file__).resolve().parents[1] / "fieldgate" / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shared_scenarios_load() -> None:
    files = sorted(SHARED.glob("*.yaml"))
    assert len(files) == 6
    by_id = {load_scenario(f).id: load_scenario(f) for f in files}
    assert len(by_id["canary-fails-rollback"].fleet.all_devices()) == 60
    assert by_id["safety-approval"].expect.approvals_required is not None


def test_generated_device_names_pad_to_per_site_width() -> None:
    inv = FleetInventory.model_validate(
        {
            "sites": [{"id": "s1", "region": "r"}],
            "generate": [
                {
                    "sites": ["s1"],
                    "class": "pump-ctl",
                    "per_site": 120,
                    "arch": "arm64",
                    "memory_mb": 512,
                },
                {
                    "sites": ["s1"],
                    "class": "env-sensor",
                    "per_site": 3,
                    "arch": "armv7",
                    "memory_mb": 256,
                },
            ],
        }
    )
    ids = [d.id for d in inv.all_devices()]
    assert ids[0] == "s1-pump-ctl-001" and ids[119] == "s1-pump-ctl-120"
    assert ids[120:] == ["s1-env-sensor-01", "s1-env-sensor-02", "s1-env-sensor-03"]


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "fleet.yaml",
        "sites:\n  - {id: s1, region: r, timezone: Europe/Berlin}\n"
        "devices:\n  - {id: d1, site: s1, class: hvac-gw, arch: arm64, memory_mb: 512,\n"
        "     colour: red}\n",
    )
    with pytest.raises(InventoryInvalid) as err:
        load_yaml(path, FleetInventory, InventoryInvalid)
    assert (
        str(err.value)
        == f"{path}: devices[0].colour: unknown key (not part of the fieldgate/v1 contract)"
    )


def test_wrong_type_and_bad_version_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "catalog.yaml",
        "modules:\n"
        "  - name: pump-logic\n    version: 1.9\n    safety: low\n    device_classes: [pump-ctl]\n"
        "    arch: [arm64]\n    min_memory_mb: lots\n"
        "    artifact: {uri: 'x', digest: 'sha256:00'}\n",
    )
    with pytest.raises(ManifestInvalid) as err:
        load_yaml(path, CatalogFile, ManifestInvalid)
    problems = dict(err.value.problems)
    assert "quote it in YAML" in problems["modules[0].version"]
    assert "integer" in problems["modules[0].min_memory_mb"]
    assert "pattern" in problems["modules[0].artifact.digest"]
    assert str(err.value).splitlines()[0].startswith(f"{path}: modules[0].")


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "sites:\n  - {id: s1\n")
    with pytest.raises(InventoryInvalid, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        load_yaml(path, FleetInventory, InventoryInvalid)


def test_scenario_reference_errors(tmp_path: Path) -> None:
    text = (SHARED / "telemetry-injection.yaml").read_text()
    bad = write(
        tmp_path, "s.yaml", text.replace("device: ber-03-hvac-gw-01", "device: ber-03-hvac-gw-99")
    )
    with pytest.raises(ScenarioInvalid, match="unknown device 'ber-03-hvac-gw-99'"):
        load_scenario(bad)
    typo = write(tmp_path, "t.yaml", text.replace("expect:", "expect:\n  outcomes: denied"))
    with pytest.raises(ScenarioInvalid, match=r"expect.outcomes: unknown key"):
        load_scenario(typo)


def test_bad_timezone_and_window(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        "sites:\n  - {id: s1, region: r, timezone: Mars/Olympus,\n"
        "     maintenance: ['Caturday 01:00-02:00']}\n",
    )
    with pytest.raises(InventoryInvalid) as err:
        load_yaml(path, FleetInventory, InventoryInvalid)
    problems = dict(err.value.problems)
    assert "IANA time zone" in problems["sites[0].timezone"]
    assert "not a maintenance window" in problems["sites[0].maintenance[0]"]


def test_version_ranges_use_packaging() -> None:
    assert version_in_range("3.2.0", ">=3.2,<4")
    assert not version_in_range("4.0.0", ">=3.2,<4")
    assert not version_in_range("3.1.9", ">=3.2,<4")
    assert not version_in_range("2.0.0-rc1", ">=1.0")
    assert version_in_range("2.0.0-rc1", ">=2.0.0-rc1")


def _plan(**changes: object) -> RolloutPlan:
    base: dict[str, object] = {
        "plan_id": "p1",
        "module": "pump-logic",
        "version": "1.9.0",
        "target": {"sites": ["rtm-05"]},
        "waves": [
            {
                "name": "canary",
                "count": 3,
                "health_gate": {"min_success_rate": 1, "max_failures": 0},
            },
            {
                "name": "rest",
                "percent": 100,
                "health_gate": {"min_success_rate": 0.95, "max_failures": 2},
            },
        ],
        "abort": {"failure_threshold": 0.1},
        "requested_by": "eng-ana",
    }
    base.update(changes)
    return RolloutPlan.model_validate(base)


def test_plan_hash_changes_with_any_field() -> None:
    plan = _plan()
    assert plan.plan_hash == _plan().plan_hash
    variants = [
        _plan(rationale="because"),
        _plan(revision=2),
        _plan(version="1.9.1"),
        _plan(target={"sites": ["rtm-05", "tpa-04"]}),
        _plan(abort={"failure_threshold": 0.05}),
        _plan(schedule={"mode": "maintenance"}),
    ]
    gate = HealthGate(min_success_rate=1, max_failures=0, soak_minutes=5)
    waves = [plan.waves[0].model_copy(update={"health_gate": gate}), plan.waves[1]]
    variants.append(plan.model_copy(update={"waves": waves}))
    hashes = {v.plan_hash for v in variants}
    assert len(hashes) == len(variants) and plan.plan_hash not in hashes


def test_plan_is_immutable_and_strict() -> None:
    plan = _plan()
    with pytest.raises(Exception, match="frozen"):
        plan.version = "2.0.0"  # type: ignore[misc]
    with pytest.raises(Exception, match="exactly one of devices, count or percent"):
        Wave.model_validate({"name": "w", "count": 2, "percent": 10})


def test_assign_waves_covers_targets_in_order() -> None:
    scenario = load_scenario(SHARED / "canary-fails-rollback.yaml")
    sites = {s.id: s for s in scenario.fleet.sites}
    plan = _plan()
    targets = select_devices(plan.target, scenario.fleet.all_devices(), sites)
    waves = assign_waves(plan, targets, sites)
    assert [len(w) for w in waves] == [3, 57]
    assert waves[0] == ["rtm-05-pump-ctl-01", "rtm-05-pump-ctl-02", "rtm-05-pump-ctl-03"]
    assert sorted(waves[0] + waves[1]) == [d.id for d in targets]


def test_selector_by_region_class_and_site_label() -> None:
    inv = load_yaml(DATA / "fleet.yaml", FleetInventory)
    sites = {s.id: s for s in inv.sites}
    regulated = select_devices(Selector(labels={"regulated": "true"}), inv.all_devices(), sites)
    assert {d.site for d in regulated} == {"ber-03", "nyc-07"}
    hvac_eu = select_devices(
        Selector(regions=["eu-central"], classes=["hvac-gw"]), inv.all_devices(), sites
    )
    assert len(hvac_eu) == 49 and all(d.device_class == "hvac-gw" for d in hvac_eu)


def test_maintenance_windows_in_site_time_zone() -> None:
    berlin = Site(
        id="ber-03", region="eu", timezone="Europe/Berlin", maintenance=["Sat 01:00-05:00"]
    )
    new_york = Site(
        id="nyc-07", region="us", timezone="America/New_York", maintenance=["Sat 01:00-05:00"]
    )
    at = datetime(2026, 11, 21, 1, 30, tzinfo=UTC)  # Sat 02:30 in Berlin, Fri 20:30 in New York
    assert berlin.in_maintenance(at)
    assert not new_york.in_maintenance(at)
    assert new_york.next_maintenance(at) == datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
    overnight = MaintenanceWindow.parse("Fri 23:00-02:00")
    local = datetime(2026, 11, 21, 1, 0, tzinfo=berlin.windows()[0].start.tzinfo)  # Sat 01:00
    assert overnight.opened_before(local) == datetime(2026, 11, 20, 23, 0)


def test_catalog_entry_signs_and_marks_tampering() -> None:
    key = SigningKey.from_seed("factory", b"test")
    entry = CatalogEntry.model_validate(
        {
            "name": "plc-bridge",
            "version": "5.1.0",
            "safety": "low",
            "device_classes": ["plc-gw"],
            "arch": ["amd64"],
        }
    )
    manifest, observed = entry.to_manifest(key)
    assert observed == manifest.artifact.digest
    assert verify(key.public_b64, manifest.signing_payload(), manifest.artifact.signature)
    unsigned, _ = entry.model_copy(update={"signed": False}).to_manifest(key)
    assert unsigned.artifact.signature is None
    _, tampered = entry.model_copy(update={"digest_mismatch": True}).to_manifest(key)
    assert tampered != manifest.artifact.digest


def test_every_contract_exports_a_strict_schema() -> None:
    for name in CONTRACTS:
        schema = json_schema(name)
        assert schema["additionalProperties"] is False, name
    assert "min_success_rate" in json_schema("plan")["$defs"]["HealthGate"]["properties"]


def test_shipped_sample_data_is_large_and_varied() -> None:
    inv = load_yaml(DATA / "fleet.yaml", FleetInventory)
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    devices = inv.all_devices()
    assert len(devices) >= 300
    assert len({d.device_class for d in devices}) >= 4
    assert len(inv.sites) >= 8 and len({s.region for s in inv.sites}) >= 3
    names = {m.name for m in catalog.modules}
    assert len(names) >= 6
    assert {m.safety.value for m in catalog.modules} == {"none", "low", "high", "critical"}
    ((_key_id, public),) = catalog.signers.items()
    assert all(verify(public, m.signing_payload(), m.artifact.signature) for m in catalog.modules)

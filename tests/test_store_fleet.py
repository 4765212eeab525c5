"""The fleet store on real SQLite and PostgreSQL: import, upsert, selection, summary."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select

from fieldgate.errors import NotFound, StoreError
from fieldgate.fleet import Device, FleetInventory, Site
from fieldgate.plan import Selector, select_devices
from fieldgate.store import Store
from fieldgate.store._fleet import DeviceRow, FleetImportRow


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened


def inventory() -> FleetInventory:
    return FleetInventory.model_validate(
        {
            "sites": [
                {
                    "id": "ber-03",
                    "region": "eu-central",
                    "timezone": "Europe/Berlin",
                    "maintenance": ["Sat 01:00-05:00"],
                    "labels": {"regulated": "true"},
                },
                {"id": "muc-01", "region": "eu-central", "connectivity": "satellite"},
                {
                    "id": "nyc-02",
                    "region": "us-east",
                    "kind": "factory",
                    "labels": {"regulated": "false"},
                },
                {"id": "empty-01", "region": "ap-southeast"},
            ],
            "devices": [
                {
                    "id": "ber-03-cam-01",
                    "site": "ber-03",
                    "class": "camera-node",
                    "arch": "arm64",
                    "memory_mb": 4096,
                    "labels": {"regulated": "false", "ring": "canary"},
                    "installed": {"vision-inspect": "1.0.0"},
                },
            ],
            "generate": [
                {
                    "sites": ["ber-03", "muc-01"],
                    "class": "hvac-gw",
                    "per_site": 3,
                    "arch": "arm64",
                    "memory_mb": 1024,
                    "installed": {"edge-runtime": "3.2.0", "hvac-controller": "2.3.4"},
                },
                {
                    "sites": ["nyc-02"],
                    "class": "pump-ctl",
                    "per_site": 2,
                    "arch": "armv7",
                    "memory_mb": 256,
                    "labels": {"ring": "canary"},
                    "installed": {"edge-runtime": "3.4.0"},
                },
            ],
        }
    )


def count_rows(store: Store, model: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_import_and_read_back_sites_and_devices(store: Store) -> None:
    inv = inventory()
    result = store.fleet.import_inventory(inv, source="fleet.yaml", actor="ops")
    assert (result.sites, result.devices) == (4, 9)
    assert store.fleet.sites() == sorted(inv.sites, key=lambda s: s.id)
    assert store.fleet.devices() == sorted(inv.all_devices(), key=lambda d: d.id)
    assert store.fleet.device("ber-03-cam-01") == inv.devices[0]
    back = store.fleet.to_inventory()
    assert back.generate == []
    assert {d.id for d in back.devices} == {d.id for d in inv.all_devices()}


def test_reimport_updates_devices_and_keeps_unlisted_ones(store: Store) -> None:
    store.fleet.import_inventory(inventory(), source="fleet.yaml", actor="ops")
    moved = Device.model_validate(
        {
            "id": "ber-03-hvac-gw-01",
            "site": "muc-01",
            "class": "hvac-gw",
            "arch": "arm64",
            "memory_mb": 2048,
            "labels": {"ring": "late"},
            "installed": {"hvac-controller": "2.4.1"},
        }
    )
    new = Device.model_validate(
        {
            "id": "muc-01-plc-gw-01",
            "site": "muc-01",
            "class": "plc-gw",
            "arch": "amd64",
            "memory_mb": 4096,
        }
    )
    muc = Site(id="muc-01", region="eu-west", labels={"regulated": "true"})
    second = store.fleet.import_inventory(
        FleetInventory(sites=[muc], devices=[moved, new]), source="fix.yaml", actor="ops"
    )
    assert store.fleet.device("ber-03-hvac-gw-01") == moved
    assert store.fleet.device("muc-01-plc-gw-01") == new
    assert store.fleet.device("ber-03-hvac-gw-02").installed["hvac-controller"] == "2.3.4"
    assert len(store.fleet.devices()) == 10
    assert [s for s in store.fleet.sites() if s.id == "muc-01"] == [muc]
    assert second.import_id > 0
    assert count_rows(store, FleetImportRow) == 2


@pytest.mark.parametrize(
    "selector",
    [
        Selector(),
        Selector(sites=["ber-03"]),
        Selector(regions=["eu-central"], classes=["hvac-gw"]),
        Selector(labels={"regulated": "true"}),  # the camera's own label says false
        Selector(labels={"regulated": "false"}),
        Selector(labels={"ring": "canary", "regulated": "false"}),
        Selector(devices=["nyc-02-pump-ctl-01", "ber-03-cam-01", "unknown"]),
        Selector(regions=["nowhere"]),
        Selector(arch=["arm64"], min_memory_mb=1024),
        Selector(installed={"hvac-controller": ">=2.3,<2.4.1"}),
        Selector(classes=["hvac-gw"], limit=2),
    ],
)
def test_sql_selection_matches_selector_semantics(store: Store, selector: Selector) -> None:
    inv = inventory()
    store.fleet.import_inventory(inv, source="fleet.yaml", actor="ops")
    sites = {s.id: s for s in inv.sites}
    expected = select_devices(selector, inv.all_devices(), sites)
    assert store.fleet.devices(selector) == expected


def test_summary_counts_in_sql(store: Store) -> None:
    store.fleet.import_inventory(inventory(), source="fleet.yaml", actor="ops")
    store.fleet.set_installed("ber-03-hvac-gw-01", "hvac-controller", "2.4.1")
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        summary = store.fleet.summary()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert summary.sites == 4
    assert summary.devices == 9
    assert summary.by_site == {"ber-03": 4, "empty-01": 0, "muc-01": 3, "nyc-02": 2}
    assert summary.by_region == {"ap-southeast": 0, "eu-central": 7, "us-east": 2}
    assert summary.by_class == {"camera-node": 1, "hvac-gw": 6, "pump-ctl": 2}
    assert summary.installed == {
        "edge-runtime": {"3.2.0": 6, "3.4.0": 2},
        "hvac-controller": {"2.3.4": 5, "2.4.1": 1},
        "vision-inspect": {"1.0.0": 1},
    }
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert selects and all("GROUP BY" in s for s in selects), "no device is loaded into Python"


def test_set_installed_adds_changes_and_removes(store: Store) -> None:
    store.fleet.import_inventory(inventory(), source="fleet.yaml", actor="ops")
    device = store.fleet.set_installed("nyc-02-pump-ctl-01", "pump-logic", "1.8.0")
    assert device.installed == {"edge-runtime": "3.4.0", "pump-logic": "1.8.0"}
    device = store.fleet.set_installed("nyc-02-pump-ctl-01", "pump-logic", "1.9.0")
    assert device.installed["pump-logic"] == "1.9.0"
    device = store.fleet.set_installed("nyc-02-pump-ctl-01", "pump-logic", None)
    assert device.installed == {"edge-runtime": "3.4.0"}
    with pytest.raises(NotFound, match="device 'ghost' is not in the fleet"):
        store.fleet.set_installed("ghost", "pump-logic", "1.0.0")
    with pytest.raises(StoreError, match="'latest' is not a version of pump-logic"):
        store.fleet.set_installed("nyc-02-pump-ctl-01", "pump-logic", "latest")


def test_not_found_and_empty_fleet(store: Store) -> None:
    with pytest.raises(NotFound, match="fleet is empty"):
        store.fleet.to_inventory()
    with pytest.raises(NotFound, match="device 'x' is not in the fleet"):
        store.fleet.device("x")
    assert store.fleet.summary().devices == 0


def test_a_failing_import_leaves_the_database_unchanged(store: Store) -> None:
    store.fleet.import_inventory(inventory(), source="fleet.yaml", actor="ops")
    before = (store.fleet.summary(), count_rows(store, FleetImportRow))
    # Built without validation, as a buggy caller might: the second device's site does not
    # exist, so the database refuses it after the sites and the first device were written.
    site = Site(id="osl-01", region="eu-north")
    good = Device.model_validate(
        {
            "id": "osl-01-hvac-gw-01",
            "site": "osl-01",
            "class": "hvac-gw",
            "arch": "arm64",
            "memory_mb": 512,
            "installed": {"hvac-controller": "9.0.0"},
        }
    )
    orphan = good.model_copy(update={"id": "zz-orphan", "site": "atlantis"})
    broken = FleetInventory.model_construct(sites=[site], devices=[good, orphan], generate=[])
    with pytest.raises(StoreError, match=r"importing the fleet inventory broken\.yaml failed"):
        store.fleet.import_inventory(broken, source="broken.yaml", actor="ops")
    assert (store.fleet.summary(), count_rows(store, FleetImportRow)) == before
    assert count_rows(store, DeviceRow) == 9


def test_a_batch_of_installed_versions_is_one_write_and_keeps_what_ran_before(
    store: Store,
) -> None:
    """Many reports' versions: one transaction, one revision bump, one statement per kind of
    row; the version a device ran before is kept for the planner (no audit log read)."""
    store.fleet.import_inventory(inventory(), source="fleet.yaml", actor="ops")
    ran = {
        d.id: d.installed["edge-runtime"]
        for d in store.fleet.devices()
        if d.installed.get("edge-runtime")
    }
    ids = sorted(ran)
    before = store.fleet.revision()
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        changed = store.fleet.set_installed_many([(d, "edge-runtime", "3.5.0") for d in ids])
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert changed == len(ids) > 1
    assert store.fleet.revision() == before + 1
    writes = [s for s in statements if not s.lstrip().upper().startswith(("SELECT", "BEGIN"))]
    assert len(writes) <= 3 + 2, writes  # revision, installed, previous (+ savepoints)
    assert all(d.installed["edge-runtime"] == "3.5.0" for d in store.fleet.devices() if d.id in ids)
    previous = store.fleet.previous_versions()
    assert {d: previous[d]["edge-runtime"] for d in ids} == ran
    # Recording what is already stored changes nothing, not even the revision.
    assert store.fleet.set_installed_many([(ids[0], "edge-runtime", "3.5.0")]) == 0
    assert store.fleet.revision() == before + 1
    with pytest.raises(NotFound, match="device 'ghost' is not in the fleet"):
        store.fleet.set_installed_many([(ids[0], "edge-runtime", "3.6.0"), ("ghost", "x", "1.0.0")])
    assert store.fleet.device(ids[0]).installed["edge-runtime"] == "3.5.0"

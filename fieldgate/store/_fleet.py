"""The fleet as rows: sites, devices, labels, installed module versions and device keys."""

from __future__ import annotations

import base64
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from packaging.version import InvalidVersion
from sqlalchemy import Select, and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, col

from fieldgate.batches import chunks
from fieldgate.contract import Contract, parse_version
from fieldgate.errors import DeviceKeyConflict, InputInvalid, NotFound, StoreError
from fieldgate.fleet import Device, FleetInventory, Site
from fieldgate.manifest import NAME_PATTERN
from fieldgate.plan import Selector, select_devices
from fieldgate.signing import key_id_of
from fieldgate.store._engine import for_writing, is_sqlite, read_scalar, transaction
from fieldgate.store._table import (
    StoreTable,
    as_utc,
    from_json_text,
    json_text,
    table_of,
    utc_now,
    utc_time_field,
)

_CHUNK = 1000
"""Ids per ``IN (...)`` list, well under SQLite's bound-parameter limit."""


class FleetImportRow(StoreTable, table=True):
    """One inventory import: who, when, from which file, how much."""

    __tablename__ = "fleet_import"

    id: int | None = Field(default=None, primary_key=True)
    source: str
    actor: str
    imported_at: datetime = utc_time_field()
    sites: int
    devices: int


class SiteRow(StoreTable, table=True):
    """One site."""

    __tablename__ = "fleet_site"

    id: str = Field(primary_key=True)
    region: str = Field(index=True)
    kind: str
    timezone: str
    maintenance_json: str
    connectivity: str
    import_id: int = Field(foreign_key="fleet_import.id")


class SiteLabelRow(StoreTable, table=True):
    """One label of a site."""

    __tablename__ = "fleet_site_label"

    site_id: str = Field(foreign_key="fleet_site.id", primary_key=True, ondelete="CASCADE")
    key: str = Field(primary_key=True)
    value: str


class DeviceRow(StoreTable, table=True):
    """One device."""

    __tablename__ = "fleet_device"

    id: str = Field(primary_key=True)
    site_id: str = Field(foreign_key="fleet_site.id", index=True)
    device_class: str = Field(index=True)
    arch: str
    memory_mb: int
    import_id: int = Field(foreign_key="fleet_import.id")


class DeviceLabelRow(StoreTable, table=True):
    """One label of a device."""

    __tablename__ = "fleet_device_label"

    device_id: str = Field(foreign_key="fleet_device.id", primary_key=True, ondelete="CASCADE")
    key: str = Field(primary_key=True)
    value: str


class InstalledRow(StoreTable, table=True):
    """One module version installed on one device."""

    __tablename__ = "fleet_installed"

    device_id: str = Field(foreign_key="fleet_device.id", primary_key=True, ondelete="CASCADE")
    module: str = Field(primary_key=True, index=True)
    version: str


class PreviousRow(StoreTable, table=True):
    """The version one module ran on one device before its latest recorded change.

    Written with the change (:meth:`FleetStore.set_installed_many`), so "the version
    these devices ran before" is one query, however long the audit log grows.
    """

    __tablename__ = "fleet_installed_before"

    device_id: str = Field(foreign_key="fleet_device.id", primary_key=True, ondelete="CASCADE")
    module: str = Field(primary_key=True)
    version: str
    """The version it ran before."""


class DeviceKeyRow(StoreTable, table=True):
    """The enrolled public key of one device: the only key its reports and hellos count under.

    Kept apart from the device row, so an inventory import never touches a device's
    identity.
    """

    __tablename__ = "fleet_device_key"

    device_id: str = Field(foreign_key="fleet_device.id", primary_key=True, ondelete="CASCADE")
    public_key: str
    """The raw ed25519 public key (base64)."""
    key_id: str = Field(index=True)
    """Its fingerprint (``ed25519:`` and 16 hex digits)."""
    enrolled_at: datetime = utc_time_field()
    enrolled_by: str


@dataclass(frozen=True)
class Enrollment:
    """One device's enrolled key."""

    device_id: str
    public_key: str
    key_id: str
    enrolled_at: datetime
    enrolled_by: str
    previous_key_id: str | None = None
    """The key this enrollment replaced (set only by :meth:`FleetStore.enroll`)."""


class FleetRevisionRow(StoreTable, table=True):
    """A counter every fleet write moves on, so readers can tell a cached fleet is current."""

    __tablename__ = "fleet_revision"

    id: int = Field(default=1, primary_key=True)
    revision: int = 0


_REVISION = select(col(FleetRevisionRow.revision)).where(col(FleetRevisionRow.id) == 1)


def _bump_revision(session: Session) -> None:
    moved = session.execute(
        update(FleetRevisionRow)
        .where(col(FleetRevisionRow.id) == 1)
        .values(revision=col(FleetRevisionRow.revision) + 1)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        session.add(FleetRevisionRow(id=1, revision=1))


class FleetSummary(Contract):
    """Device counts that stand in for device lists when agents and policies reason."""

    sites: int
    """Number of sites."""
    devices: int
    """Number of devices."""
    by_region: dict[str, int]
    """Devices per region (regions whose sites have no devices count 0)."""
    by_site: dict[str, int]
    """Devices per site."""
    by_class: dict[str, int]
    """Devices per device class."""
    installed: dict[str, dict[str, int]]
    """Devices per installed version, per module."""


@dataclass(frozen=True)
class InventoryImport:
    """What one inventory import did."""

    import_id: int
    """Id of the import record."""
    sites: int
    """Sites added or updated."""
    devices: int
    """Devices added or updated."""


def _upsert(session: Session, model: type[StoreTable], rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, updating the non-key columns of rows whose key exists."""
    if not rows:
        return
    table = table_of(model)
    dialect = sqlite if is_sqlite(session.connection()) else postgresql
    statement = dialect.insert(table)
    keys = [c.name for c in table.primary_key.columns]
    statement = statement.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    session.execute(statement, rows)


def _selection(selector: Selector) -> Select[str]:
    """Select the ids of the devices ``selector`` picks, as :meth:`Selector.matches` does."""
    query = select(col(DeviceRow.id)).join(SiteRow, col(DeviceRow.site_id) == SiteRow.id)
    if selector.sites:
        query = query.where(col(DeviceRow.site_id).in_(selector.sites))
    if selector.regions:
        query = query.where(col(SiteRow.region).in_(selector.regions))
    if selector.classes:
        query = query.where(col(DeviceRow.device_class).in_(selector.classes))
    if selector.devices:
        query = query.where(col(DeviceRow.id).in_(selector.devices))
    if selector.arch:
        query = query.where(col(DeviceRow.arch).in_(selector.arch))
    if selector.min_memory_mb is not None:
        query = query.where(col(DeviceRow.memory_mb) >= selector.min_memory_mb)
    for key, value in selector.labels.items():
        # A device label wins over the site label of the same key.
        on_device = and_(
            col(DeviceLabelRow.device_id) == col(DeviceRow.id), col(DeviceLabelRow.key) == key
        )
        device_has = exists().where(on_device)
        device_matches = exists().where(on_device, col(DeviceLabelRow.value) == value)
        site_matches = exists().where(
            col(SiteLabelRow.site_id) == col(DeviceRow.site_id),
            col(SiteLabelRow.key) == key,
            col(SiteLabelRow.value) == value,
        )
        query = query.where(or_(device_matches, and_(~device_has, site_matches)))
    return query


def _load_devices(session: Session, selector: Selector) -> list[Device]:
    # Plain column tuples, not ORM objects: fleets run to 100,000s of devices.
    picked = select(_selection(selector).subquery().c.id)
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    label = table_of(DeviceLabelRow).c
    for device_id, key, value in session.execute(
        select(label.device_id, label.key, label.value).where(label.device_id.in_(picked))
    ):
        labels[device_id][key] = value
    installed: dict[str, dict[str, str]] = defaultdict(dict)
    item = table_of(InstalledRow).c
    for device_id, module, version in session.execute(
        select(item.device_id, item.module, item.version).where(item.device_id.in_(picked))
    ):
        installed[device_id][module] = version
    device = table_of(DeviceRow).c
    rows = session.execute(
        select(device.id, device.site_id, device.device_class, device.arch, device.memory_mb)
        .where(device.id.in_(picked))
        .order_by(device.id)
    )
    return [
        Device.model_validate(
            {
                "id": device_id,
                "site": site_id,
                "class": device_class,
                "arch": arch,
                "memory_mb": memory_mb,
                "labels": labels.get(device_id, {}),
                "installed": installed.get(device_id, {}),
            }
        )
        for device_id, site_id, device_class, arch, memory_mb in rows
    ]


def _counts(session: Session, query: Select[str, int]) -> dict[str, int]:
    return {str(key): int(count) for key, count in session.execute(query).all()}


class FleetStore:
    """Sites, devices and installed module versions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)
        # (revision, sites, devices, sites by id): the whole fleet as of a revision
        self._cached: tuple[int, list[Site], list[Device], dict[str, Site]] | None = None
        self._sites_cached: tuple[int, list[Site], dict[str, Site]] | None = None

    def revision(self) -> int:
        """How many times the fleet was written (0 for a fleet never written)."""
        revision = read_scalar(self._engine, _REVISION, "reading the fleet revision")
        return int(revision or 0)

    def _whole_fleet(self) -> tuple[int, list[Site], list[Device], dict[str, Site]]:
        revision = self.revision()
        if self._cached is None or self._cached[0] != revision:
            _, sites, by_id = self._all_sites(revision)
            with transaction(self._engine, "reading devices") as session:
                devices = _load_devices(session, Selector())
            self._cached = (revision, sites, devices, by_id)
        return self._cached

    def _all_sites(self, revision: int) -> tuple[int, list[Site], dict[str, Site]]:
        """Every site (and by id) as of ``revision``: read again only when it moved, and
        without the devices (a running rollout moves the revision with every batch)."""
        if self._sites_cached is None or self._sites_cached[0] != revision:
            sites = self._read_sites()
            self._sites_cached = (revision, sites, {site.id: site for site in sites})
        return self._sites_cached

    def import_inventory(
        self, inventory: FleetInventory, source: str, actor: str
    ) -> InventoryImport:
        """Add or update every site and device of ``inventory`` in one transaction.

        Devices already stored take the inventory's site, class, arch, memory, labels
        and installed modules; stored devices the inventory does not list stay as
        they are.
        """
        devices = inventory.all_devices()
        device_ids = [d.id for d in devices]
        site_ids = [s.id for s in inventory.sites]
        with transaction(self._writer, f"importing the fleet inventory {source}") as session:
            _bump_revision(session)
            origin = FleetImportRow(
                source=source,
                actor=actor,
                imported_at=utc_now(),
                sites=len(site_ids),
                devices=len(devices),
            )
            session.add(origin)
            session.flush()
            _upsert(
                session,
                SiteRow,
                [
                    {
                        "id": s.id,
                        "region": s.region,
                        "kind": s.kind.value,
                        "timezone": s.timezone,
                        "maintenance_json": json_text(s.maintenance),
                        "connectivity": s.connectivity.value,
                        "import_id": origin.id,
                    }
                    for s in inventory.sites
                ],
            )
            for chunk in chunks(site_ids, _CHUNK):
                session.execute(delete(SiteLabelRow).where(col(SiteLabelRow.site_id).in_(chunk)))
            site_labels = [
                {"site_id": s.id, "key": k, "value": v}
                for s in inventory.sites
                for k, v in s.labels.items()
            ]
            if site_labels:
                session.execute(insert(SiteLabelRow), site_labels)
            _upsert(
                session,
                DeviceRow,
                [
                    {
                        "id": d.id,
                        "site_id": d.site,
                        "device_class": d.device_class,
                        "arch": d.arch,
                        "memory_mb": d.memory_mb,
                        "import_id": origin.id,
                    }
                    for d in devices
                ],
            )
            for chunk in chunks(device_ids, _CHUNK):
                session.execute(
                    delete(DeviceLabelRow).where(col(DeviceLabelRow.device_id).in_(chunk))
                )
                session.execute(delete(InstalledRow).where(col(InstalledRow.device_id).in_(chunk)))
            device_labels = [
                {"device_id": d.id, "key": k, "value": v}
                for d in devices
                for k, v in d.labels.items()
            ]
            if device_labels:
                session.execute(insert(DeviceLabelRow), device_labels)
            installed = [
                {"device_id": d.id, "module": m, "version": v}
                for d in devices
                for m, v in d.installed.items()
            ]
            if installed:
                session.execute(insert(InstalledRow), installed)
            assert origin.id is not None
            return InventoryImport(origin.id, len(site_ids), len(devices))

    def sites(self) -> list[Site]:
        """List every site, by id."""
        return list(self._all_sites(self.revision())[1])

    def site_map(self) -> dict[str, Site]:
        """Every site by its id, built once per fleet revision (do not change it)."""
        return self._all_sites(self.revision())[2]

    def snapshot(self) -> tuple[list[Site], list[Device]]:
        """Every site and every device, by id, as of one fleet revision (one check for both)."""
        _, sites, devices, _ = self._whole_fleet()
        return list(sites), list(devices)

    def _read_sites(self) -> list[Site]:
        with transaction(self._engine, "reading sites") as session:
            labels: dict[str, dict[str, str]] = defaultdict(dict)
            for label in session.scalars(select(SiteLabelRow)):
                labels[label.site_id][label.key] = label.value
            return [
                Site(
                    id=row.id,
                    region=row.region,
                    kind=row.kind,
                    timezone=row.timezone,
                    maintenance=from_json_text(row.maintenance_json),
                    connectivity=row.connectivity,
                    labels=labels.get(row.id, {}),
                )
                for row in session.scalars(select(SiteRow).order_by(col(SiteRow.id)))
            ]

    def devices(self, selector: Selector | None = None) -> list[Device]:
        """List the devices ``selector`` picks (every device without one), by id.

        Reads by explicit device ids go to the database; other selectors are answered from
        the whole fleet as of the current revision, read once and kept until the next write.
        """
        selector = selector or Selector()
        if not selector.devices:
            _, _, devices, by_id = self._whole_fleet()
            return select_devices(selector, devices, by_id)
        with transaction(self._engine, "reading devices") as session:
            devices = _load_devices(session, selector)
        if selector.installed or selector.limit is not None:
            # Version ranges and the limit are not SQL: let the selector finish the choice.
            devices = select_devices(selector, devices, {s.id: s for s in self._read_sites()})
        return devices

    def device(self, device_id: str) -> Device:
        """Return the device with this id; raise NotFound if there is none."""
        with transaction(self._engine, f"reading device {device_id}") as session:
            found = _load_devices(session, Selector(devices=[device_id]))
        if not found:
            raise NotFound(f"device {device_id!r} is not in the fleet")
        return found[0]

    def set_installed(self, device_id: str, module: str, version: str | None) -> Device:
        """Record that ``device_id`` runs ``module`` at ``version`` (None: not installed).

        Returns:
            The device as now stored.
        """
        self.set_installed_many([(device_id, module, version)])
        return self.device(device_id)

    def set_installed_many(
        self, changes: Iterable[tuple[str, str, str | None]], *, tx: Session | None = None
    ) -> int:
        """Record many ``(device_id, module, version)`` at once (version None: not installed).

        One transaction and at most one fleet-revision bump for the whole batch, the
        rows written with one statement each (``executemany``); a later change of the same
        device and module wins. A version that differs from the stored one keeps the
        stored one as the device's previous version (:meth:`previous_versions`). Given
        ``tx`` (see :meth:`Store.writing`), the rows join that transaction.

        Returns:
            How many (device, module) rows changed.

        Raises:
            NotFound: a device is not in the fleet; nothing was recorded.
        """
        latest: dict[tuple[str, str], str | None] = {}
        for device_id, module, version in changes:
            _check_module_version(module, version)
            latest[(device_id, module)] = version
        if not latest:
            return 0
        if tx is not None:
            return self._set_installed(tx, latest)
        what = f"recording installed versions on {len({d for d, _ in latest})} devices"
        with transaction(self._writer, what) as session:
            return self._set_installed(session, latest)

    def _set_installed(self, session: Session, latest: dict[tuple[str, str], str | None]) -> int:
        ids = sorted({device_id for device_id, _ in latest})
        item = table_of(InstalledRow).c
        present: set[str] = set()
        current: dict[tuple[str, str], str] = {}
        for chunk in chunks(ids, _CHUNK):
            present.update(
                session.scalars(select(col(DeviceRow.id)).where(col(DeviceRow.id).in_(chunk)))
            )
            rows = session.execute(
                select(item.device_id, item.module, item.version).where(item.device_id.in_(chunk))
            )
            current.update({(d, m): v for d, m, v in rows})
        missing = [d for d in ids if d not in present]
        if missing:
            raise NotFound(f"device {missing[0]!r} is not in the fleet")
        changed = {key: v for key, v in latest.items() if current.get(key) != v}
        if not changed:
            return 0
        _bump_revision(session)
        gone = [{"d": d, "m": m} for (d, m), v in changed.items() if v is None]
        if gone:
            session.execute(
                delete(table_of(InstalledRow)).where(
                    item.device_id == bindparam("d"), item.module == bindparam("m")
                ),
                gone,
            )
        _upsert(
            session,
            InstalledRow,
            [
                {"device_id": d, "module": m, "version": v}
                for (d, m), v in changed.items()
                if v is not None
            ],
        )
        _upsert(
            session,
            PreviousRow,
            [
                {"device_id": d, "module": m, "version": current[(d, m)]}
                for (d, m) in changed
                if (d, m) in current
            ],
        )
        return len(changed)

    def previous_versions(self) -> dict[str, dict[str, str]]:
        """By device id, the version each module ran before its latest recorded change."""
        before = table_of(PreviousRow).c
        found: dict[str, dict[str, str]] = defaultdict(dict)
        with transaction(self._engine, "reading previous versions") as session:
            for device_id, module, version in session.execute(
                select(before.device_id, before.module, before.version)
            ):
                found[device_id][module] = version
        return dict(found)

    def enroll(
        self,
        keys: Mapping[str, str],
        actor: str,
        *,
        replace: bool = False,
        tx: Session | None = None,
    ) -> list[Enrollment]:
        """Enroll each device's public key (device id -> base64 key) in one transaction.

        A device keeps the key it has unless ``replace`` is set; enrolling the key it
        already has changes nothing.

        Returns:
            The enrollments that changed something (new, or a different key), by device id.

        Raises:
            NotFound: a device is not in the fleet; nothing was enrolled.
            DeviceKeyConflict: a device has another key and ``replace`` is not set.
        """
        for device_id, public_key in keys.items():
            _check_public_key(device_id, public_key)
        if tx is not None:
            return self._enroll(tx, keys, actor, replace)
        with transaction(self._writer, "enrolling device keys") as session:
            return self._enroll(session, keys, actor, replace)

    def _enroll(
        self, session: Session, keys: Mapping[str, str], actor: str, replace: bool
    ) -> list[Enrollment]:
        ids = sorted(keys)
        present: set[str] = set()
        current: dict[str, str] = {}
        for chunk in chunks(ids, _CHUNK):
            present.update(
                session.scalars(select(col(DeviceRow.id)).where(col(DeviceRow.id).in_(chunk)))
            )
            rows = session.execute(
                select(col(DeviceKeyRow.device_id), col(DeviceKeyRow.public_key)).where(
                    col(DeviceKeyRow.device_id).in_(chunk)
                )
            )
            current.update({device_id: key for device_id, key in rows})
        missing = [d for d in ids if d not in present]
        if missing:
            raise NotFound(f"device {missing[0]!r} is not in the fleet; no key was enrolled")
        now = utc_now()
        changed: list[Enrollment] = []
        for device_id in ids:
            key, before = keys[device_id], current.get(device_id)
            if before == key:
                continue
            if before is not None and not replace:
                raise DeviceKeyConflict(
                    f"device {device_id} is enrolled with key {key_id_of(before)}, not "
                    f"{key_id_of(key)}; re-enroll explicitly (--replace) to change its key"
                )
            changed.append(
                Enrollment(
                    device_id,
                    key,
                    key_id_of(key),
                    now,
                    actor,
                    key_id_of(before) if before else None,
                )
            )
        if changed:
            _upsert(
                session,
                DeviceKeyRow,
                [
                    {
                        "device_id": e.device_id,
                        "public_key": e.public_key,
                        "key_id": e.key_id,
                        "enrolled_at": e.enrolled_at,
                        "enrolled_by": e.enrolled_by,
                    }
                    for e in changed
                ],
            )
        return changed

    def device_keys(self, device_ids: Iterable[str] | None = None) -> dict[str, str]:
        """The enrolled public keys (base64) of ``device_ids`` (every enrolled device: None)."""
        query = select(col(DeviceKeyRow.device_id), col(DeviceKeyRow.public_key))
        found: dict[str, str] = {}
        with transaction(self._engine, "reading device keys") as session:
            if device_ids is None:
                found.update({d: k for d, k in session.execute(query)})
            else:
                for chunk in chunks(sorted(set(device_ids)), _CHUNK):
                    rows = session.execute(query.where(col(DeviceKeyRow.device_id).in_(chunk)))
                    found.update({d: k for d, k in rows})
        return found

    def enrollment(self, device_id: str) -> Enrollment | None:
        """The key enrolled for ``device_id``, with when and by whom (None: none)."""
        with transaction(self._engine, f"reading the key of {device_id}") as session:
            row = session.get(DeviceKeyRow, device_id)
            if row is None:
                return None
            return Enrollment(
                row.device_id, row.public_key, row.key_id, as_utc(row.enrolled_at), row.enrolled_by
            )

    def summary(self) -> FleetSummary:
        """Count sites and devices by region, site, class and installed version, in SQL."""
        device_count = func.count(col(DeviceRow.id))
        on_site = col(DeviceRow.site_id) == col(SiteRow.id)
        site_id, region = col(SiteRow.id), col(SiteRow.region)
        device_class = col(DeviceRow.device_class)
        module, version = col(InstalledRow.module), col(InstalledRow.version)
        with transaction(self._engine, "summarising the fleet") as session:
            by_site = _counts(
                session,
                select(site_id, device_count).outerjoin(DeviceRow, on_site).group_by(site_id),
            )
            by_region = _counts(
                session,
                select(region, device_count).outerjoin(DeviceRow, on_site).group_by(region),
            )
            by_class = _counts(
                session,
                select(device_class, device_count).group_by(device_class),
            )
            installed: dict[str, dict[str, int]] = defaultdict(dict)
            for name, number, count in session.execute(
                select(module, version, func.count()).group_by(module, version)
            ):
                installed[name][number] = count
        return FleetSummary(
            sites=len(by_site),
            devices=sum(by_site.values()),
            by_region=dict(sorted(by_region.items())),
            by_site=dict(sorted(by_site.items())),
            by_class=dict(sorted(by_class.items())),
            installed={
                name: dict(sorted(versions.items(), key=lambda kv: parse_version(kv[0])))
                for name, versions in installed.items()
            },
        )

    def to_inventory(self) -> FleetInventory:
        """Return the stored fleet as an inventory of explicit devices; raise NotFound if empty."""
        sites = self.sites()
        if not sites:
            raise NotFound("the fleet is empty: import an inventory first")
        return FleetInventory(sites=sites, devices=self.devices())


def _check_public_key(device_id: str, public_key: str) -> None:
    try:
        raw = base64.b64decode(public_key, validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise InputInvalid(
            "device key",
            [(device_id, "must be a raw ed25519 public key in base64 (32 bytes)")],
        )


def _check_module_version(module: str, version: str | None) -> None:
    if not re.match(NAME_PATTERN, module):
        raise StoreError(f"{module!r} is not a module name (lower-case letters, digits, hyphens)")
    if version is not None:
        try:
            parse_version(version)
        except InvalidVersion:
            raise StoreError(f"{version!r} is not a version of {module} (e.g. 2.4.1)") from None

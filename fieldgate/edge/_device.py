"""A field device's own state and how it handles a command, without the network.

The state is one SQLite file per device:

- ``identity``: device id, site, the device's own ed25519 key (made when the state is
  provisioned; it never leaves the device, only its public half is enrolled in the
  fleet), the pinned control-plane key, health and the hybrid logical clock's last reading;
- ``installed``: module versions;
- ``inbox``: every authenticated command id with its final report, the idempotency
  record (a repeated id gets the stored report back and nothing runs again);
- ``effects``: a journal of every install or rollback carried out (one row each, never
  deduplicated, so it shows whether anything ran twice);
- ``outbox``: reports not yet acknowledged by the broker;
- ``waiting``: authenticated commands that arrived outside the maintenance windows they may
  start in, each with the opening of its next window (the agent starts them then).

Handling a command is one transaction: inbox entry, effect, installed version, outbox
report and clock reading commit together or not at all, so a kill -9 at any point
leaves either nothing (the broker redelivers) or everything (the outbox resends).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from fieldgate.commands import (
    Action,
    DeviceCommand,
    DeviceReport,
    Health,
    ReportStatus,
    WindowState,
)
from fieldgate.contract import problems_of
from fieldgate.edge._artifacts import ArtifactSource, ArtifactUnavailable, digest_of
from fieldgate.edge._clock import HybridClock, wall_ms
from fieldgate.edge._wire import MAX_PAYLOAD, Hello, check_segment, encode
from fieldgate.epoch import at_us, to_ms, to_us
from fieldgate.errors import DeviceStateInvalid
from fieldgate.signing import SigningKey, key_id_of, verify

DocumentT = TypeVar("DocumentT", DeviceReport, Hello)

REFUSED_PREFIX = "refused:"
"""Command id prefix of reports about input the device could not authenticate.

Such a report never answers a command: the id after the prefix is only what the
input claimed, and the gateway files it as a rejection.
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS installed (
    module TEXT PRIMARY KEY, version TEXT NOT NULL, command_id TEXT
);
CREATE TABLE IF NOT EXISTS inbox (
    command_id TEXT PRIMARY KEY, module TEXT NOT NULL, action TEXT NOT NULL,
    issued_us INTEGER NOT NULL, status TEXT NOT NULL, report TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_module ON inbox (module, issued_us);
CREATE TABLE IF NOT EXISTS effects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT NOT NULL, action TEXT NOT NULL,
    module TEXT NOT NULL, before TEXT, after TEXT, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS waiting (
    command_id TEXT PRIMARY KEY, command TEXT NOT NULL, opens_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT NOT NULL, report TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Effect:
    """One install or rollback a device carried out."""

    seq: int
    command_id: str
    action: str
    module: str
    before: str | None
    after: str | None


class DeviceStore:
    """The SQLite file of one device; every write is one transaction, synchronous=FULL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A field device loses power, not only its process: every commit reaches the disk.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls,
        state_dir: Path,
        device_id: str,
        *,
        site: str | None = None,
        installed: dict[str, str] | None = None,
        control_key: str | None = None,
        replace_control_key: bool = False,
    ) -> DeviceStore:
        """Open (or provision) the state of ``device_id`` under ``state_dir``.

        A new state takes ``site`` and ``installed`` as the device's starting point; an
        existing one keeps its own and must agree on the site. The control-plane key is
        pinned on first use of the state and only replaced when asked to.

        Raises:
            DeviceStateInvalid: the state is another device's, has no site, or pins
                another control key.
        """
        check_segment(device_id, "device id")
        store = cls(state_dir / f"{device_id}.sqlite")
        try:
            store._provision(device_id, site, installed or {}, control_key, replace_control_key)
        except BaseException:
            store.close()
            raise
        return store

    def _provision(
        self,
        device_id: str,
        site: str | None,
        installed: dict[str, str],
        control_key: str | None,
        replace_control_key: bool,
    ) -> None:
        where = str(self.path)
        with self._transaction() as db:
            known = dict(db.execute("SELECT key, value FROM identity").fetchall())
            if known.get("device_id", device_id) != device_id:
                raise DeviceStateInvalid(
                    f"{where}: the state belongs to device {known['device_id']!r}, "
                    f"not {device_id!r}"
                )
            stored_site = known.get("site")
            if stored_site and site and stored_site != site:
                raise DeviceStateInvalid(
                    f"{where}: device {device_id} is at site {stored_site!r}, not {site!r}"
                )
            site = stored_site or site
            if not site:
                raise DeviceStateInvalid(f"{where}: a new device state needs its site (--site)")
            check_segment(site, "site")
            pinned = known.get("control_key")
            if control_key and pinned and pinned != control_key and not replace_control_key:
                raise DeviceStateInvalid(
                    f"{where}: the state trusts control key {key_id_of(pinned)}, "
                    f"not {key_id_of(control_key)}; replace it explicitly to rotate keys"
                )
            values = {"device_id": device_id, "site": site}
            if "device_key" not in known:
                values["device_key"] = SigningKey.generate(device_id).private_b64()
            if control_key:
                values["control_key"] = control_key
            db.executemany(
                "INSERT OR REPLACE INTO identity (key, value) VALUES (?, ?)", values.items()
            )
            if "device_id" not in known:
                db.executemany(
                    "INSERT OR IGNORE INTO installed (module, version) VALUES (?, ?)",
                    sorted(installed.items()),
                )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _identity(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM identity WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def device_id(self) -> str:
        """The device this state belongs to."""
        value = self._identity("device_id")
        assert value is not None
        return value

    @property
    def site(self) -> str:
        """The device's site."""
        value = self._identity("site")
        assert value is not None
        return value

    @property
    def signing_key(self) -> SigningKey:
        """The device's own key: it signs every report and hello."""
        value = self._identity("device_key")
        assert value is not None
        return SigningKey.from_private_b64(self.device_id, value)

    @property
    def public_key(self) -> str:
        """The public half of the device's key (base64): what the fleet enrolls."""
        return self.signing_key.public_b64

    @property
    def control_key(self) -> str | None:
        """The pinned control-plane public key (base64)."""
        return self._identity("control_key")

    def clock_last(self) -> tuple[int, int]:
        """The clock's last persisted reading ``(wall_ms, counter)``."""
        value = self._identity("clock")
        if not value:
            return (0, 0)
        wall, counter = json.loads(value)
        return (int(wall), int(counter))

    def health(self) -> Health:
        """The device's health as it last assessed it."""
        value = self._identity("health")
        return Health.model_validate_json(value) if value else Health(ok=True)

    def installed(self) -> dict[str, str]:
        """Module versions installed now."""
        with self._lock:
            return dict(self._db.execute("SELECT module, version FROM installed").fetchall())

    def outcome(self, command_id: str) -> DeviceReport | None:
        """The stored report of a command handled before, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT report FROM inbox WHERE command_id = ?", (command_id,)
            ).fetchone()
        return DeviceReport.model_validate_json(row[0]) if row else None

    def latest_issued(self, module: str) -> int | None:
        """Issue time (µs) of the newest command carried out on ``module``."""
        with self._lock:
            row = self._db.execute(
                "SELECT max(issued_us) FROM inbox "
                "WHERE module = ? AND action != ? AND status IN (?, ?)",
                (
                    module,
                    Action.validate.value,
                    ReportStatus.applied.value,
                    ReportStatus.failed.value,
                ),
            ).fetchone()
        return row[0] if row and row[0] is not None else None

    def inbox(self) -> dict[str, DeviceReport]:
        """Every handled command id with its report."""
        with self._lock:
            rows = self._db.execute("SELECT command_id, report FROM inbox").fetchall()
        return {cid: DeviceReport.model_validate_json(text) for cid, text in rows}

    def effects(self) -> list[Effect]:
        """The journal of installs and rollbacks carried out, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, command_id, action, module, before, after FROM effects ORDER BY seq"
            ).fetchall()
        return [Effect(*row) for row in rows]

    def outbox(self) -> list[tuple[int, bytes]]:
        """Reports waiting for the broker's acknowledgement, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, report FROM outbox ORDER BY seq").fetchall()
        return [(seq, text.encode()) for seq, text in rows]

    def hold(self, command: DeviceCommand, opens: datetime) -> None:
        """Keep a command that may not start yet until its next window ``opens``."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO waiting (command_id, command, opens_us) VALUES (?, ?, ?)",
                (command.command_id, encode(command).decode(), to_us(opens)),
            )

    def waiting(self) -> list[tuple[datetime, DeviceCommand]]:
        """Commands waiting for a window, with when it opens, soonest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT opens_us, command FROM waiting ORDER BY opens_us, command_id"
            ).fetchall()
        return [(at_us(opens), DeviceCommand.model_validate_json(text)) for opens, text in rows]

    def release(self, command_id: str) -> None:
        """Drop a waiting command that has been carried out or refused."""
        with self._transaction() as db:
            db.execute("DELETE FROM waiting WHERE command_id = ?", (command_id,))

    def sent(self, seq: int) -> None:
        """Drop an outbox report the broker acknowledged."""
        with self._transaction() as db:
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def save_clock(self, clock: tuple[int, int]) -> None:
        """Persist a clock reading handed out without a report (a hello)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO identity (key, value) VALUES ('clock', ?)",
                (json.dumps(list(clock)),),
            )

    def enqueue(self, report: DeviceReport, clock: tuple[int, int]) -> int:
        """Put a report in the outbox (and persist the clock); return its outbox number."""
        with self._transaction() as db:
            return self._enqueue(db, report, clock)

    def _enqueue(self, db: sqlite3.Connection, report: DeviceReport, clock: tuple[int, int]) -> int:
        cursor = db.execute(
            "INSERT INTO outbox (command_id, report, created_at) VALUES (?, ?, ?)",
            (report.command_id, encode(report).decode(), time.time()),
        )
        db.execute(
            "INSERT OR REPLACE INTO identity (key, value) VALUES ('clock', ?)",
            (json.dumps(list(clock)),),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def record(
        self,
        command: DeviceCommand,
        report: DeviceReport,
        clock: tuple[int, int],
        effect: tuple[str | None, str | None] | None,
    ) -> int:
        """Record a command's final outcome in one transaction; return the report's outbox number.

        Args:
            command: The authenticated command.
            report: Its report (installed modules and health as they now are).
            clock: The clock reading to persist.
            effect: ``(before, after)`` versions when the command carried out an install
                or rollback, else None.
        """
        with self._transaction() as db:
            db.execute(
                "INSERT INTO inbox (command_id, module, action, issued_us, status, report, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    command.command_id,
                    command.module,
                    command.action.value,
                    to_us(command.issued_at),
                    report.status.value,
                    encode(report).decode(),
                    time.time(),
                ),
            )
            if effect is not None:
                before, after = effect
                db.execute(
                    "INSERT INTO effects (command_id, action, module, before, after, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        command.command_id,
                        command.action.value,
                        command.module,
                        before,
                        after,
                        time.time(),
                    ),
                )
            if report.status is ReportStatus.applied and command.action is not Action.validate:
                db.execute(
                    "INSERT OR REPLACE INTO installed (module, version, command_id) "
                    "VALUES (?, ?, ?)",
                    (command.module, command.version, command.command_id),
                )
            if command.action is not Action.validate:
                db.execute(
                    "INSERT OR REPLACE INTO identity (key, value) VALUES ('health', ?)",
                    (encode(report.health).decode(),),
                )
            return self._enqueue(db, report, clock)

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class Handled:
    """What handling one message produced: the report to send and its outbox number."""

    report: DeviceReport | None
    """The report; None while the command waits for its maintenance window."""
    outbox_seq: int | None
    """Its outbox number; None for a stored report sent again (it is in the inbox already,
    and a lost copy is sent again when the command is)."""
    applied_now: bool
    """Whether the command ran now (False for refusals and repeated ids)."""
    waits_until: datetime | None = None
    """When the window a waiting command may start in opens."""


class FieldDevice:
    """Checks and carries out commands on one device's state; the network is elsewhere.

    Checks, in order: size and JSON, the command contract, the addressee, the control
    plane's signature, the inbox (a repeated id returns its stored report), the
    deadline, whether a newer command for the module was carried out already (an old
    command replayed), and the digest of the fetched artifact. Only then does the
    install or rollback run.
    """

    def __init__(
        self,
        store: DeviceStore,
        control_key: str,
        *,
        artifacts: ArtifactSource | None = None,
        apply_seconds: float = 0.0,
        fail_installs: frozenset[str] = frozenset(),
        physical_ms: Callable[[], int] | None = None,
    ) -> None:
        """Bind the logic to a device's state.

        Args:
            store: The device's state.
            control_key: The control plane's public key (base64): the only signer obeyed.
            artifacts: Where artifacts come from (default: sample stand-ins).
            apply_seconds: How long an install or rollback takes (a simulated device).
            fail_installs: ``module@version`` refs whose install fails (a simulated fault).
            physical_ms: Wall clock in milliseconds (tests inject one).
        """
        self.store = store
        self.device_id = store.device_id
        self.site = store.site
        self.control_key = control_key
        self.artifacts = artifacts or ArtifactSource()
        self.apply_seconds = apply_seconds
        self.fail_installs = fail_installs
        self.clock = HybridClock(
            self.device_id, store.clock_last(), physical=physical_ms or wall_ms
        )
        self.key = store.signing_key

    def signed(self, document: DocumentT) -> DocumentT:
        """Return ``document`` (a report or hello) signed with the device's key."""
        signature = self.key.sign(document.signing_payload())
        return document.model_copy(update={"signature": signature})

    def now(self) -> datetime:
        """The device's wall clock."""
        return datetime.now(UTC)

    def handle(self, payload: bytes) -> Handled:
        """Check and carry out one command message; return the report to send."""
        if len(payload) > MAX_PAYLOAD:
            return self._refuse("-", f"malformed: {len(payload)} bytes, more than {MAX_PAYLOAD}")
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return self._refuse("-", "malformed: the payload is not JSON")
        claimed = data.get("command_id") if isinstance(data, dict) else None
        claimed = claimed if isinstance(claimed, str) and len(claimed) <= 64 else "-"
        try:
            command = DeviceCommand.model_validate(data)
        except ValidationError as exc:
            where, rule = problems_of(exc)[0]
            return self._refuse(claimed, f"malformed: {where or 'command'}: {rule}")
        if command.device_id != self.device_id:
            return self._refuse(
                claimed,
                f"addressed to device {command.device_id!r}; this device is {self.device_id!r}",
            )
        if not command.signature:
            return self._refuse(claimed, "unsigned: the command carries no signature")
        if not verify(self.control_key, command.signing_payload(), command.signature):
            return self._refuse(
                claimed,
                "bad signature: it does not verify with the control-plane key "
                f"{key_id_of(self.control_key)}",
            )
        stored = self.store.outcome(command.command_id)
        if stored is not None:
            # A repeated id: the stored result again, nothing carried out again.
            return Handled(stored, None, False)
        return self._carry_out(command)

    def due(self) -> list[Handled]:
        """Carry out the waiting commands whose window has opened (or report them expired)."""
        now = self.now()
        handled = []
        for opens, command in self.store.waiting():
            if opens > now:
                break
            if self.store.outcome(command.command_id) is None:
                result = self._carry_out(command)
                if result.report is None:
                    continue  # still waiting (the window it waited for is gone: the next)
                handled.append(result)
            self.store.release(command.command_id)
        return handled

    def next_wake(self) -> datetime | None:
        """When the first waiting command's window opens (None: nothing waits)."""
        waiting = self.store.waiting()
        return waiting[0][0] if waiting else None

    def _carry_out(self, command: DeviceCommand) -> Handled:
        self.clock.observe(to_ms(command.issued_at))
        now = self.now()
        if now > command.deadline:
            return self._final(
                command,
                ReportStatus.expired,
                f"deadline {command.deadline.isoformat()} passed before the device started it",
            )
        window = command.window_state(now)
        if window is WindowState.missed:
            assert command.windows
            return self._final(
                command,
                ReportStatus.expired,
                f"its last maintenance window closed at {command.windows[-1].closes.isoformat()} "
                "before the device could start it",
            )
        if window is WindowState.waiting:
            # Not now: outside its windows nothing starts; it waits here for the next one.
            opens = command.next_opening(now)
            assert opens is not None
            self.store.hold(command, opens)
            return Handled(None, None, False, waits_until=opens)
        latest = self.store.latest_issued(command.module)
        if latest is not None and to_us(command.issued_at) < latest:
            return self._final(
                command,
                ReportStatus.rejected,
                f"replayed: a command for {command.module} issued later was carried out already",
            )
        if command.action is Action.validate:
            return self._final(command, ReportStatus.applied, "")
        try:
            content = self.artifacts.fetch(command.module, command.version)
        except ArtifactUnavailable as exc:
            return self._final(command, ReportStatus.failed, f"artifact unavailable: {exc}")
        # The factory's signed targets first: they also catch endless data, cut off at the
        # signed length, before anything is hashed against the control plane's word.
        problem = self.artifacts.problem(command.module, command.version, content)
        if problem is not None:
            return self._final(command, ReportStatus.rejected, f"catalog targets: {problem}")
        observed = digest_of(content)
        if observed != command.digest:
            return self._final(
                command,
                ReportStatus.rejected,
                f"digest mismatch: the fetched artifact of {command.module}@{command.version} "
                f"is {observed}, the command says {command.digest}",
            )
        if self.apply_seconds:
            time.sleep(self.apply_seconds)
        before = self.store.installed().get(command.module)
        if f"{command.module}@{command.version}" in self.fail_installs:
            health = Health(ok=False, score=0.2, note=f"{command.action.value} failed")
            return self._final(
                command,
                ReportStatus.failed,
                f"{command.action.value} of {command.module}@{command.version} failed",
                health=health,
                effect=(before, before),
            )
        return self._final(
            command,
            ReportStatus.applied,
            "",
            health=Health(ok=True),
            effect=(before, command.version),
        )

    def _final(
        self,
        command: DeviceCommand,
        status: ReportStatus,
        reason: str,
        *,
        health: Health | None = None,
        effect: tuple[str | None, str | None] | None = None,
    ) -> Handled:
        installed = self.store.installed()
        if status is ReportStatus.applied and command.action is not Action.validate:
            installed[command.module] = command.version
        report = self.signed(
            DeviceReport(
                command_id=command.command_id,
                device_id=self.device_id,
                status=status,
                installed=installed,
                health=health or self.store.health(),
                reason=reason,
                hlc=self.clock.now(),
            )
        )
        seq = self.store.record(command, report, self.clock.last, effect)
        return Handled(report, seq, effect is not None)

    def _refuse(self, claimed: str, reason: str) -> Handled:
        report = self.signed(
            DeviceReport(
                command_id=REFUSED_PREFIX + claimed,
                device_id=self.device_id,
                status=ReportStatus.rejected,
                installed=self.store.installed(),
                health=self.store.health(),
                reason=reason,
                hlc=self.clock.now(),
            )
        )
        return Handled(report, self.store.enqueue(report, self.clock.last), False)

    def hello(self, agent: str) -> Hello:
        """What the device says about itself when it comes online (the clock reading persisted)."""
        hlc = self.clock.now()
        self.store.save_clock(self.clock.last)
        return self.signed(
            Hello(
                device_id=self.device_id,
                site=self.site,
                online=True,
                installed=self.store.installed(),
                health=self.store.health(),
                hlc=hlc,
                agent=agent,
            )
        )

    def farewell(self, agent: str) -> Hello:
        """The signed offline hello: the will the broker publishes, and the goodbye."""
        return self.signed(
            Hello(device_id=self.device_id, site=self.site, online=False, agent=agent)
        )

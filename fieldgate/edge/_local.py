"""Agent processes on this machine, for ``fieldgate fleet up``, tests, benchmarks and demos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from fieldgate.batches import chunks
from fieldgate.config import PASSWORD_ENV
from fieldgate.edge._agent import AgentSpec, DeviceSpec
from fieldgate.edge._device import DeviceStore
from fieldgate.edge._wire import Broker, Channel, Hello, connect_async, new_client

if TYPE_CHECKING:
    from fieldgate.store import Store


class LocalFleet:
    """Runs devices as agent processes (``python -m fieldgate.edge --spec FILE``), several each.

    Each process has its own spec file under the state directory; killing a process
    takes all its devices down at once, as a power cut at a cabinet would.
    """

    def __init__(
        self,
        broker: Broker,
        state_dir: Path,
        control_key: str,
        devices: Sequence[DeviceSpec],
        *,
        per_process: int = 10,
        apply_seconds: float = 0.0,
        fail_installs: Iterable[str] = (),
        artifacts: Path | None = None,
        log_dir: Path | None = None,
        enroll_in: Store | None = None,
        replace_keys: bool = False,
        credentials: Path | None = None,
        catalogs: Sequence[Path] | None = None,
    ) -> None:
        """Plan the processes; :meth:`start` launches them.

        Args:
            broker: Broker the agents connect to (its password is passed in the environment).
            state_dir: Where the devices' state files and the spec files go.
            control_key: The control plane's public key the agents obey.
            devices: The devices, with site and starting modules for new state.
            per_process: Devices per process.
            apply_seconds: How long a simulated install takes.
            fail_installs: ``module@version`` refs whose install fails.
            artifacts: Artifact directory (default: sample stand-ins).
            log_dir: Where each process writes its log (default: inherit stderr).
            enroll_in: The control plane's store: :meth:`start` enrolls every device's
                key in its fleet (audited) before the agents speak.
            replace_keys: Re-enroll a device whose state has another key than the fleet's
                (a state made anew); without it that is refused.
            credentials: Directory of the devices' broker credentials: each agent connects
                as its device, and the broker's own user and password stay here.
            catalogs: Catalog repositories the devices check their installs against. None:
                with ``enroll_in``, the repositories that store holds, exported under
                ``state_dir/catalog`` when the fleet starts; else none.
        """
        if per_process < 1:
            raise ValueError("per_process must be at least 1")
        self.broker = broker
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.control_key = control_key
        self.enroll_in = enroll_in
        self.replace_keys = replace_keys
        self.groups = [list(group) for group in chunks(devices, per_process)]
        self._spec = dict(
            control_key=control_key,
            apply_seconds=apply_seconds,
            fail_installs=list(fail_installs),
            artifacts=artifacts,
            credentials=credentials,
            catalogs=list(catalogs or []),
        )
        self._export_catalogs = catalogs is None
        self._group_of = {d.device_id: i for i, group in enumerate(self.groups) for d in group}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def device_ids(self) -> list[str]:
        """Every device, in process order."""
        return [d.device_id for group in self.groups for d in group]

    def group_of(self, device_id: str) -> int:
        """Index of the process that runs ``device_id``."""
        return self._group_of[device_id]

    def start(self) -> LocalFleet:
        """Launch every process."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.enroll_in is not None:
            from fieldgate.audit import ActorKind
            from fieldgate.catalog_metadata import export_repository
            from fieldgate.devices import enroll_devices

            if self._export_catalogs:
                exported = export_repository(self.enroll_in, self.state_dir / "catalog")
                self._spec["catalogs"] = exported

            enroll_devices(
                self.enroll_in,
                self.public_keys(),
                "local-fleet",
                actor_kind=ActorKind.system,
                replace=self.replace_keys,
            )
        for index in range(len(self.groups)):
            self.start_group(index)
        return self

    def start_group(self, index: int) -> None:
        """Launch (or relaunch) process ``index``."""
        own_identities = self._spec["credentials"] is not None
        spec = AgentSpec(
            broker=replace(
                self.broker,
                password=None,
                username=None if own_identities else self.broker.username,
            ),
            state_dir=self.state_dir,
            devices=self.groups[index],
            **self._spec,
        )
        # Named by the first device: several fleets may share one state directory.
        name = f"agents-{self.groups[index][0].device_id}"
        path = self.state_dir / f"{name}.json"
        path.write_text(spec.model_dump_json(indent=2))
        env = dict(os.environ)
        if own_identities:  # nor does a password of this machine's reach the agents
            env.pop(PASSWORD_ENV, None)
        elif self.broker.password is not None:
            env[PASSWORD_ENV] = self.broker.password
        out: Any = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        try:
            self.processes[index] = subprocess.Popen(
                [sys.executable, "-m", "fieldgate.edge", "--spec", str(path)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
            )
        finally:
            if out is not None:
                out.close()

    def public_keys(self) -> dict[str, str]:
        """Each device's public key, from its state (provisioned now if new: its key is made then).

        Raises:
            DeviceStateInvalid: a state belongs to another device or pins another key.
        """
        keys = {}
        for device in (d for group in self.groups for d in group):
            store = DeviceStore.open(
                self.state_dir,
                device.device_id,
                site=device.site,
                installed=device.installed,
                control_key=self.control_key,
            )
            try:
                keys[device.device_id] = store.public_key
            finally:
                store.close()
        return keys

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to process ``index`` and, for a kill, wait until it is gone."""
        process = self.processes[index]
        if process.poll() is None:
            process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                process.wait(timeout=15)

    def alive(self) -> list[int]:
        """Indexes of processes that run."""
        return [i for i, p in self.processes.items() if p.poll() is None]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process cleanly (SIGTERM: the agents say goodbye), kill stragglers."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        end = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class HelloWatcher:
    """Follows the retained hellos of every device under a broker's topic root."""

    def __init__(self, broker: Broker, client_id: str | None = None) -> None:
        self.broker = broker
        self.client = new_client(
            broker, client_id or f"fieldgate-watch-{os.getpid()}-{id(self):x}", persistent=False
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._online: dict[str, bool] = {}
        self._changed = threading.Condition()

    def start(self) -> HelloWatcher:
        """Connect and subscribe."""
        connect_async(self.client, self.broker, persistent=False)
        return self

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> HelloWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self.broker.every(Channel.hello), 1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return
        try:
            hello = Hello.model_validate_json(message.payload)
        except ValueError:
            return
        with self._changed:
            self._online[hello.device_id] = hello.online
            self._changed.notify_all()

    def online(self) -> set[str]:
        """Devices whose latest hello says online."""
        with self._changed:
            return {d for d, up in self._online.items() if up}

    def wait(self, device_ids: Iterable[str], online: bool = True, timeout: float = 30.0) -> bool:
        """Wait until every device in ``device_ids`` is online (or offline); tell whether it is."""
        wanted = set(device_ids)
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                done = {d for d in wanted if self._online.get(d, False) == online}
                if done == wanted:
                    return True
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))

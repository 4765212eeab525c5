"""A rollout through the graph over a real Mosquitto to agent processes, under fire.

The planner, validator, policy gate and executor run as in production; only the
transport is MQTT, to one agent process per device, each behind a link that can be
cut. While the rollout runs, the test restarts the broker mid-wave, kill -9s agents
and starts them again, cuts agents off for a while, and a duplicator delivers copies
of commands and reports late and out of order. At the end, from the agents' own
stores: zero acknowledged commands lost, exactly one effect per command id, and the
whole fleet converged on the new version.

The CI version runs 24 agents; the soak (``-m slow``) runs more (40, or
``FIELDGATE_SOAK_AGENTS``), longer, with a broker that is killed and loses its state
at every strike and a second rollout (a rollback) on top.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import pytest
from _edge_support import Duplicator, LinkCutter, Mosquitto, wait_until
from _scenario_driver import open_run

from fieldgate.commands import DeviceCommand
from fieldgate.edge import DeviceSpec, Gateway, HelloWatcher, LocalFleet
from fieldgate.runtime import Settings
from fieldgate.scenario import Scenario
from fieldgate.transport import Dispatched, MqttTransport

pytestmark = pytest.mark.mqtt

MODULE, OLD, NEW = "air-quality-model", "1.1.0", "1.2.0"
SITE = "lyon-02"


def scenario(devices: int) -> Scenario:
    return Scenario.model_validate(
        {
            "apiVersion": "fieldgate/v1",
            "kind": "Scenario",
            "id": "edge-mqtt-rollout",
            "category": "faults",
            "context": {"now": "2026-11-21T10:00:00Z"},
            "roster": {"eng-ana": ["engineer"]},
            "actor": "eng-ana",
            "fleet": {
                "sites": [
                    {
                        "id": SITE,
                        "region": "eu-west",
                        "kind": "field",
                        "timezone": "Europe/Paris",
                        "maintenance": ["Sun 02:00-04:00"],
                    }
                ],
                "generate": [
                    {
                        "sites": [SITE],
                        "class": "env-sensor",
                        "per_site": devices,
                        "arch": "armv7",
                        "memory_mb": 256,
                        "installed": {"edge-runtime": "3.4.0", MODULE: OLD},
                    }
                ],
            },
            "catalog": [
                {
                    "name": MODULE,
                    "version": version,
                    "safety": "none",
                    "device_classes": ["env-sensor"],
                    "arch": ["armv7"],
                    "min_memory_mb": 128,
                    "downgrade_allowed": True,
                }
                for version in (OLD, NEW)
            ],
            "request": f"Update {MODULE} to {NEW} on the env sensors at {SITE}",
            "expect": {"outcome": "completed"},
        }
    )


@dataclass
class Chaos:
    """The faults the test injects, and what it injected."""

    broker: Mosquitto
    agents: dict[str, LocalFleet]
    links: dict[str, LinkCutter]
    rng: random.Random
    kill_broker: bool = False
    log: list[str] = field(default_factory=list)
    kills: int = 0
    cut_off: set[str] = field(default_factory=set)
    threads: list[threading.Thread] = field(default_factory=list)

    def later(self, delay: float, action: object, *args: object) -> None:
        def run() -> None:
            time.sleep(delay)
            action(*args)  # type: ignore[operator]

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def kill_and_restart(self, device_id: str, down: float) -> None:
        self.agents[device_id].kill(0)
        self.kills += 1
        self.log.append(f"kill -9 {device_id}")
        time.sleep(down)
        self.agents[device_id].start_group(0)

    def cut(self, device_id: str, seconds: float) -> None:
        self.links[device_id].cut()
        self.cut_off.add(device_id)
        self.log.append(f"cut {device_id} for {seconds:g}s")
        time.sleep(seconds)
        self.links[device_id].heal()

    def restart_broker(self) -> None:
        self.log.append(
            f"broker restart ({'kill -9, state lost' if self.kill_broker else 'SIGTERM'})"
        )
        if self.kill_broker:
            self.broker.stop(kill=True)
            for saved in self.broker.directory.glob("*.db"):
                saved.unlink()
            time.sleep(1.0)
            self.broker.start()
            self.broker.restarts += 1
        else:
            self.broker.restart(down_for=1.0)

    def settle(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)


class ChaosTransport(MqttTransport):
    """The MQTT transport, striking as each wave is dispatched."""

    def __init__(self, gateway: Gateway, chaos: Chaos, devices: Sequence[str]) -> None:
        super().__init__(gateway)
        self.chaos = chaos
        self.untouched = list(devices)
        self.waves_seen: set[int] = set()
        self.restart_waves = {2}
        """Waves whose first dispatch is followed by a broker restart."""

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        first_of_wave = wave not in self.waves_seen
        self.waves_seen.add(wave)
        in_chunk = [c.device_id for c in commands]
        self.untouched = [d for d in self.untouched if d not in in_chunk]
        chaos = self.chaos
        if first_of_wave and wave == 1:
            # Two devices of the next wave lose their uplink before it reaches them.
            for device_id in chaos.rng.sample(self.untouched, 2):
                chaos.later(0.0, chaos.cut, device_id, 8.0)
        result = super().dispatch(commands, wave)
        if first_of_wave and wave >= 1:
            # Mid-install, a cabinet loses power.
            for device_id in chaos.rng.sample(in_chunk, min(2, len(in_chunk))):
                chaos.later(chaos.rng.uniform(0.05, 0.4), chaos.kill_and_restart, device_id, 1.5)
        if first_of_wave and wave in self.restart_waves:
            chaos.later(0.3, chaos.restart_broker)
        return result


def own_effects(state: Path, device_id: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(effect command ids, inbox statuses, installed modules) from a device's own store."""
    path = state / f"{device_id}.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        effects = [r[0] for r in db.execute("SELECT command_id FROM effects ORDER BY seq")]
        inbox = dict(db.execute("SELECT command_id, status FROM inbox").fetchall())
        installed = dict(db.execute("SELECT module, version FROM installed").fetchall())
    return effects, inbox, installed


def run_rollout_under_fire(tmp_path: Path, devices: int, *, soak: bool) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    state = tmp_path / "agents"
    settings = Settings(wave_deadline=timedelta(seconds=40), max_soak=timedelta(seconds=1))
    with ExitStack() as stack:
        stack.callback(broker.stop)
        world, orchestrator = stack.enter_context(
            open_run(scenario(devices), f"sqlite:///{tmp_path}/control.db", settings=settings)
        )
        ids = [d.id for d in world.store.fleet.devices()]
        assert len(ids) == devices
        links = {d: LinkCutter(broker.port) for d in ids}
        for link in links.values():
            stack.callback(link.close)
        agents = {
            d: LocalFleet(
                broker.broker(port=links[d].port),
                state,
                world.ctx.control_key.public_b64,
                [
                    DeviceSpec(
                        device_id=d, site=SITE, installed={"edge-runtime": "3.4.0", MODULE: OLD}
                    )
                ],
                apply_seconds=0.3,
                log_dir=tmp_path / "logs" / d,
                enroll_in=world.store,
                replace_keys=True,  # the agents stand in for the world's simulated devices
            )
            for d in ids
        }
        for fleet in agents.values():
            fleet.start()
            stack.callback(fleet.stop)
        watcher = stack.enter_context(HelloWatcher(broker.broker()))
        assert watcher.wait(ids, timeout=60), f"offline: {set(ids) - watcher.online()}"

        gateway = Gateway(
            world.store,
            broker.broker(),
            control_key=world.ctx.control_key.public_b64,
            resend_after=2.0,
        ).start()
        stack.callback(gateway.close)
        duplicator = Duplicator(broker.broker(), seed=devices).start()
        stack.callback(duplicator.close)
        chaos = Chaos(broker, agents, links, random.Random(devices), kill_broker=soak)
        transport = ChaosTransport(gateway, chaos, ids)
        if soak:
            transport.restart_waves = {1, 2}
        orchestrator.ctx = replace(world.ctx, transport=transport)

        started = time.monotonic()
        view = orchestrator.submit(
            world.scenario.request, world.scenario.actor, plan_id=world.plan_id
        )
        assert view.status == "queued", view.values.get("reasons")
        view = orchestrator.work(view.thread_id)
        assert view.outcome == "completed", (view.values.get("reasons"), chaos.log)
        rounds = [world.plan_id]

        if soak:
            # A second rollout on top: everything back to the old version, under the same fire.
            chaos.settle()
            transport.waves_seen.clear()
            transport.untouched = list(ids)
            transport.restart_waves = {0, 1}  # a rollback runs in fewer waves
            back = orchestrator.submit(
                f"Roll back {MODULE} to {OLD} on the env sensors at {SITE}",
                world.scenario.actor,
                plan_id=world.plan_id + "-back",
            )
            assert back.status == "queued", back.values.get("reasons")
            back = orchestrator.work(back.thread_id)
            assert back.outcome == "completed", (back.values.get("reasons"), chaos.log)
            rounds.append(back.plan_id)
        elapsed = time.monotonic() - started

        # Heal everything and let the last copies drain.
        chaos.settle()
        for link in links.values():
            link.heal()
        wait_until(lambda: not gateway.outstanding(), 60, "every command answered")
        duplicator.close()
        gateway.settle(quiet=1.0)
        with ThreadPoolExecutor(len(agents)) as pool:
            list(pool.map(LocalFleet.stop, agents.values()))

        want = OLD if soak else NEW
        ledger = gateway.ledger()
        assert len(ledger) == devices * len(rounds)
        # Zero acknowledged commands lost: each has its report, and the device has it too.
        assert [cid for cid, (_, status) in ledger.items() if status != "applied"] == []
        effects_by_device = {}
        for device_id in ids:
            effects, inbox, installed = own_effects(state, device_id)
            mine = {cid for cid, (d, _) in ledger.items() if d == device_id}
            assert set(inbox) == mine and set(inbox.values()) == {"applied"}
            # Exactly one effect per command id, and none for anything else.
            assert Counter(effects) == Counter(mine), (device_id, effects)
            assert installed[MODULE] == want
            effects_by_device[device_id] = effects
        assert world.store.fleet.summary().installed[MODULE] == {want: devices}
        assert all(gateway.telemetry(d)["installed"][MODULE] == want for d in ids)
        assert world.store.audit.verify().ok

        # The faults really happened.
        assert broker.restarts >= len(rounds)
        assert chaos.kills >= 2 * len(rounds)
        assert len(chaos.cut_off) >= 2 and all(links[d].cuts for d in chaos.cut_off)
        assert duplicator.published > 0 and gateway.stats.duplicates > 0
        print(
            f"\n{devices} agents, {len(rounds)} rollout(s) in {elapsed:.1f}s; "
            f"chaos: {'; '.join(chaos.log)}; {gateway.stats}"
        )


def test_a_rollout_over_mqtt_survives_restarts_kills_cuts_and_duplicates(tmp_path: Path) -> None:
    run_rollout_under_fire(tmp_path, 24, soak=False)


@pytest.mark.slow
def test_soak_two_rollouts_over_mqtt_with_a_broker_that_loses_its_state(tmp_path: Path) -> None:
    run_rollout_under_fire(tmp_path, int(os.environ.get("FIELDGATE_SOAK_AGENTS", "40")), soak=True)

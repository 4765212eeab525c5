"""MQTT as a transport: commands go to field agents through the gateway, on the wall clock."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from fieldgate.commands import DeviceCommand, DeviceReport
from fieldgate.devices import MAX_CLOCK_SKEW_S
from fieldgate.edge import Broker, Gateway
from fieldgate.store import Store
from fieldgate.transport._base import Dispatched


class MqttTransport:
    """Delivers commands to field agents over an MQTT broker; waiting takes real time.

    The gateway behind it keeps the ledger of commands and records what devices report
    in the fleet store itself, in each device's clock order (``records_installed``).
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def name(self) -> str:
        """``mqtt``."""
        return "mqtt"

    @property
    def records_installed(self) -> bool:
        """True: the gateway records reported versions in the fleet store, ordered by HLC."""
        return True

    def now(self) -> datetime:
        """The wall clock (UTC)."""
        return datetime.now(UTC)

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        """Record and publish the commands; online devices count as accepted."""
        result = self.gateway.send(commands)
        return Dispatched(
            accepted=result.accepted,
            queued=result.queued,
            duplicates=result.duplicates,
            unknown=result.unknown,
        )

    def wait(self, pending: set[str], until: datetime) -> list[DeviceReport]:
        """Collect reports until every pending id is answered or ``until`` passes."""
        return self.gateway.collect(pending, (until - self.now()).total_seconds())

    def sleep_until(self, until: datetime) -> list[DeviceReport]:
        """Sleep until ``until``; return the reports that arrived meanwhile."""
        reports: list[DeviceReport] = []
        while (remaining := (until - self.now()).total_seconds()) > 0:
            time.sleep(min(remaining, 0.5))
            reports += self.gateway.collect(set(), 0)
        return reports + self.gateway.collect(set(), 0)

    def sent(self, command_ids: set[str]) -> dict[str, DeviceReport | None]:
        """Which of ``command_ids`` the gateways' ledger holds, with their stored reports."""
        return self.gateway.sent(command_ids)

    def telemetry(self, device_id: str) -> dict[str, Any]:
        """The device's latest reported state; ``health.note`` is untrusted text."""
        return self.gateway.telemetry(device_id)


@contextmanager
def open_mqtt_transport(
    store: Store,
    broker: Broker,
    *,
    control_key: str | None = None,
    client_id: str = "fieldgate-gateway",
    resend_after: float = 30.0,
    connect_timeout: float = 10.0,
    max_clock_skew: float = MAX_CLOCK_SKEW_S,
) -> Iterator[MqttTransport]:
    """Connect a gateway on ``store`` to ``broker`` and yield the transport over it.

    Args:
        store: The control plane's database.
        broker: The MQTT broker.
        control_key: The control plane's public key: commands that do not verify with it
            are refused before anything is published.
        client_id: The gateway's persistent session (one per worker).
        resend_after: Seconds before an unanswered command to an online device is resent.
        connect_timeout: Seconds to wait for the broker before giving up.
        max_clock_skew: Seconds a device's report or hello may be stamped ahead of the
            gateway's clock (``FIELDGATE_DEVICE_CLOCK_SKEW``).

    Raises:
        BrokerUnreachable: the broker cannot be reached; nothing was sent.
    """
    gateway = Gateway(
        store,
        broker,
        control_key=control_key,
        client_id=client_id,
        resend_after=resend_after,
        connect_timeout=connect_timeout,
        max_clock_skew=max_clock_skew,
    ).start()
    try:
        yield MqttTransport(gateway)
    finally:
        gateway.close()

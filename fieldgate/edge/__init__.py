"""The edge over MQTT: field agents on devices, the gateway on the control plane, their clock.

- :class:`FieldAgent` runs one device: it checks and carries out signed commands
  exactly once, keeps its own SQLite store and an outbox, and reconciles against the
  retained desired command whenever it reconnects.
- :class:`Gateway` publishes commands, keeps the ledger of what was sent and ingests
  reports and hellos into the fleet store, deduplicated and ordered by each device's
  :class:`HybridClock`.
- :class:`LocalFleet` starts agent processes for local runs, tests and benchmarks.
- :func:`write_broker_config` writes the Mosquitto set-up that lets only the fleet in,
  each device to its own topics; clients find their identity's password with
  :func:`as_identity`.

The transport the executor uses over this is :class:`fieldgate.transport.MqttTransport`.

The gateway's and the broker set-up's names are loaded on first use: agent processes (``python -m
fieldgate.edge``) then start without the database layer.
"""

from typing import TYPE_CHECKING, Any

from fieldgate.edge._agent import AGENT, AgentSpec, DeviceSpec, FieldAgent, open_agents, run_agents
from fieldgate.edge._artifacts import ArtifactSource, digest_of, sample_artifact
from fieldgate.edge._clock import HybridClock
from fieldgate.edge._credentials import (
    GATEWAY_IDENTITY,
    BrokerCredentials,
    as_identity,
    read_credentials,
)
from fieldgate.edge._device import (
    REFUSED_PREFIX,
    DeviceStore,
    Effect,
    FieldDevice,
    Handled,
)
from fieldgate.edge._local import HelloWatcher, LocalFleet
from fieldgate.edge._wire import Broker, Channel, Hello, encode, reachable
from fieldgate.errors import (
    BrokerUnreachable,
    CommandUnsigned,
    CredentialsInvalid,
    DeviceStateInvalid,
)

if TYPE_CHECKING:
    from fieldgate.edge._broker import BrokerSetup, write_broker_config
    from fieldgate.edge._gateway import Gateway, GatewayStats, SendResult

_GATEWAY_NAMES = {"Gateway", "GatewayStats", "SendResult"}
_BROKER_NAMES = {"BrokerSetup", "write_broker_config"}


def __getattr__(name: str) -> Any:
    if name in _GATEWAY_NAMES:
        from fieldgate.edge import _gateway

        return getattr(_gateway, name)
    if name in _BROKER_NAMES:
        from fieldgate.edge import _broker

        return getattr(_broker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGENT",
    "GATEWAY_IDENTITY",
    "REFUSED_PREFIX",
    "AgentSpec",
    "ArtifactSource",
    "Broker",
    "BrokerCredentials",
    "BrokerSetup",
    "BrokerUnreachable",
    "Channel",
    "CommandUnsigned",
    "CredentialsInvalid",
    "DeviceSpec",
    "DeviceStateInvalid",
    "DeviceStore",
    "Effect",
    "FieldAgent",
    "FieldDevice",
    "Gateway",
    "GatewayStats",
    "Handled",
    "Hello",
    "HelloWatcher",
    "HybridClock",
    "LocalFleet",
    "SendResult",
    "as_identity",
    "digest_of",
    "encode",
    "open_agents",
    "reachable",
    "read_credentials",
    "run_agents",
    "sample_artifact",
    "write_broker_config",
]

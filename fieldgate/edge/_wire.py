"""What travels over MQTT: the broker settings, the topic layout and the hello document.

Topics, under a root that defaults to ``fieldgate``::

    {root}/{site}/{device}/cmd       control plane -> device   QoS 1        a signed DeviceCommand
    {root}/{site}/{device}/desired   control plane -> device   QoS 1, retained  the latest command
    {root}/{site}/{device}/report    device -> control plane   QoS 1        a DeviceReport
    {root}/{site}/{device}/hello     device -> control plane   QoS 1, retained  online, installed
                                                                         (the will says offline)

Every client keeps a persistent session (MQTT 5: clean start off with a session
expiry; MQTT 3.1.1: clean session off), so QoS 1 messages sent while it was away
wait for it at the broker.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldgate.commands import Health, HybridTimestamp
from fieldgate.contract import Contract, VersionStr, canonical_json
from fieldgate.errors import InputInvalid
from fieldgate.manifest import Name

MAX_PAYLOAD = 64 * 1024
"""Bytes a command, report or hello may take; anything longer is malformed."""

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

MqttVersion = Literal["5", "3.1.1"]

RECEIVE_MAXIMUM = 65535
"""QoS 1 messages a client lets the broker have in flight to it (MQTT 5)."""


class Channel(StrEnum):
    """The last segment of a topic: what flows on it."""

    cmd = "cmd"
    desired = "desired"
    report = "report"
    hello = "hello"


@dataclass(frozen=True)
class Broker:
    """Where the MQTT broker is and how to talk to it."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    """Connect with TLS (``mqtts://``)."""
    ca_file: str | None = None
    """CA bundle that signed the broker's certificate (default: the system's)."""
    cert_file: str | None = None
    """Client certificate for mutual TLS."""
    key_file: str | None = None
    """Private key of the client certificate."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    """Never shown: a repr in a log or a traceback leaves it out."""
    version: MqttVersion = "5"
    """MQTT protocol version."""
    keepalive: int = 30
    """Seconds between pings; the broker declares a silent client gone after 1.5 times this."""
    session_expiry: int = 7 * 24 * 3600
    """Seconds the broker keeps a disconnected client's session and queued messages (MQTT 5)."""
    reconnect_max: int = 30
    """Longest pause in seconds between reconnect attempts (they start at one second)."""
    topic_root: str = "fieldgate"
    """First topic segment; deployments sharing one broker can set their own."""

    @classmethod
    def from_url(cls, url: str, **settings: object) -> Broker:
        """Read ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…`` (TLS, port 8883).

        Raises:
            InputInvalid: the URL is not an MQTT URL, or a setting is out of range.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise InputInvalid(
                "broker URL", [("", f"{url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")]
            )
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise InputInvalid("broker URL", [("port", f"{url!r} has no valid port")]) from None
        broker = cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
        chosen = {k: v for k, v in settings.items() if v is not None}
        return replace(broker, **chosen).checked()  # type: ignore[arg-type]

    def checked(self) -> Broker:
        """Return self after checking the settings; raise InputInvalid naming the bad one."""
        problems = []
        if not 0 < self.port < 65536:
            problems.append(("port", f"must be 1 to 65535, got {self.port}"))
        if self.version not in ("5", "3.1.1"):
            problems.append(("version", f"must be 5 or 3.1.1, got {self.version!r}"))
        if not 5 <= self.keepalive <= 3600:
            problems.append(("keepalive", f"must be 5 to 3600 seconds, got {self.keepalive}"))
        if self.reconnect_max < 1:
            problems.append(("reconnect_max", f"must be at least 1, got {self.reconnect_max}"))
        if not _SEGMENT.match(self.topic_root):
            problems.append(("topic_root", f"{self.topic_root!r} is not one topic segment"))
        if problems:
            raise InputInvalid("broker settings", problems)
        return self

    @property
    def url(self) -> str:
        """The broker as a URL, without the password."""
        who = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{who}{self.host}:{self.port}"

    def topic(self, site: str, device: str, channel: Channel) -> str:
        """The topic of one device's channel."""
        return f"{self.topic_root}/{site}/{device}/{channel.value}"

    def every(self, channel: Channel) -> str:
        """The subscription filter for one channel of every device."""
        return f"{self.topic_root}/+/+/{channel.value}"

    def parse_topic(self, topic: str) -> tuple[str, str, Channel] | None:
        """Split a device topic into (site, device, channel); None for any other topic."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.topic_root:
            return None
        site, device, last = parts[1], parts[2], parts[3]
        if not (_SEGMENT.match(site) and _SEGMENT.match(device)):
            return None
        try:
            return site, device, Channel(last)
        except ValueError:
            return None


def reachable(broker: Broker, timeout: float = 1.0) -> bool:
    """Tell whether the broker's port accepts TCP connections."""
    try:
        with socket.create_connection((broker.host, broker.port), timeout=timeout):
            return True
    except OSError:
        return False


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it can be one topic segment; raise InputInvalid otherwise."""
    if not _SEGMENT.match(value):
        raise InputInvalid(what, [("", f"{value!r} cannot be used in a topic")])
    return value


class Hello(Contract):
    """What a device says about itself when it comes online (and its will, when it goes)."""

    device_id: str
    """The device."""
    site: str
    """Its site."""
    online: bool
    """Whether it is connected; the will published by the broker says false."""
    installed: dict[Name, VersionStr] = {}
    """Modules installed now (empty in the will)."""
    health: Health | None = None
    """Its health now (none in the will)."""
    hlc: HybridTimestamp | None = None
    """When it said so; the will carries none."""
    agent: str = ""
    """Agent software and version."""
    signature: str | None = None
    """Base64 ed25519 signature of the device's own key over the hello without this field."""

    def signing_payload(self) -> dict[str, object]:
        """The fields the device signs."""
        return self.model_dump(mode="json", exclude={"signature"})


def encode(document: Contract) -> bytes:
    """Canonical JSON of a contract, as sent on the wire."""
    return canonical_json(document.model_dump(mode="json"))


def new_client(
    broker: Broker,
    client_id: str,
    *,
    will: tuple[str, bytes] | None = None,
    persistent: bool = True,
    manual_ack: bool = False,
) -> mqtt.Client:
    """An unconnected paho client set up for ``broker``: protocol, session, TLS, auth, will.

    Args:
        broker: The broker and its settings.
        client_id: Stable id: the broker keys the persistent session by it.
        will: A retained QoS 1 message the broker publishes if the client vanishes.
        persistent: Keep the session (and queued QoS 1 messages) across disconnects.
        manual_ack: Acknowledge received QoS 1 messages only through ``client.ack``.
    """
    v5 = broker.version == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else not persistent,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if broker.tls:
        client.tls_set(
            ca_certs=broker.ca_file,
            certfile=broker.cert_file,
            keyfile=broker.key_file,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(1, broker.reconnect_max)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    return client


def connect_async(client: mqtt.Client, broker: Broker, persistent: bool = True) -> None:
    """Start connecting ``client`` in its own network thread; it reconnects by itself."""
    if broker.version == "5":
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = broker.session_expiry if persistent else 0
        # Without it Mosquitto keeps 20 messages in flight to a client and queues at most
        # 1000 more (then drops QoS 1 messages): a gateway taking a fleet's reports needs room.
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        client.connect_async(
            broker.host,
            broker.port,
            broker.keepalive,
            clean_start=not persistent,
            properties=properties,
        )
    else:
        client.connect_async(broker.host, broker.port, broker.keepalive)
    client.loop_start()

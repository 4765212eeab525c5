"""Edge transport: how device commands reach devices and reports come back.

One interface, :class:`Transport`; the default implementation is the in-process
fleet twin (:class:`TwinTransport`), the other an MQTT broker with field agents
(:class:`MqttTransport`, see :mod:`fieldgate.edge`). The executor only ever talks
to this interface, so it runs the same over the twin and over a broker.
"""

from fieldgate.transport._base import Dispatched, Transport
from fieldgate.transport._mqtt import MqttTransport, open_mqtt_transport
from fieldgate.transport._twin import TwinTransport

__all__ = ["Dispatched", "MqttTransport", "Transport", "TwinTransport", "open_mqtt_transport"]

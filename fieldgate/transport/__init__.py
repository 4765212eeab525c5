"""Edge transport: how device commands reach devices and reports come back.

One interface, :class:`Transport`; the default implementation is the in-process
fleet twin (:class:`TwinTransport`). The executor only ever talks to this
interface, so it runs the same over the twin and over a broker.
"""

from fieldgate.transport._base import Dispatched, Transport
from fieldgate.transport._twin import TwinTransport

__all__ = ["Dispatched", "Transport", "TwinTransport"]

"""Observer: receive what gVisor itself saw inside a sandbox (its runtime-monitoring
trace points) as typed events.

Callers: the sandbox backends (start a :class:`TraceSink`, pass
:func:`pod_init_config` to runsc) and the classifiers that turn :class:`TraceEvent`
into ``BlockedAction`` events. Layers, lowest first: ``wire`` (protobuf and datagram
bytes), ``points`` (message schemas and the points farm enables), ``events``
(typed events), ``sink`` (the socket server). See docs/observer.md.
"""

from farm.observe.events import Context, TraceEvent
from farm.observe.points import DEFAULT_POINTS, MessageType, PointSpec, SockAddr, parse_sockaddr
from farm.observe.sink import SinkStats, TraceSink, pod_init_config

__all__ = [
    "DEFAULT_POINTS",
    "Context",
    "MessageType",
    "PointSpec",
    "SinkStats",
    "SockAddr",
    "TraceEvent",
    "TraceSink",
    "parse_sockaddr",
    "pod_init_config",
]

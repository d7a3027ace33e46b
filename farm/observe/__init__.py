"""Observer: receive what gVisor itself saw inside a sandbox (its runtime-monitoring
trace points), classify it into ``BlockedAction`` records and attribute each to a crate.

Callers: ``farm.runner`` (through ``daemon.HostObserver`` and ``classify``/``verdict``),
``farm observer`` (``daemon.ObserverDaemon``), ``farm host setup`` (``pod_init_config``).
Layers, lowest first: ``wire`` (protobuf and datagram bytes), ``points`` (message
schemas and the points farm enables), ``events`` (typed events), ``sink`` (the socket
server), ``lifecycle`` (which container a datagram is for, when it is over), ``spool``
(one file of raw datagrams per container), ``daemon`` (the host daemon
and the runner's observer), ``processes`` (process tree; who a step is comes from
its ecosystem's ``Attributor``, farm.ecosystems),
``classify`` (BlockedAction), ``verdict`` (allow rules, enforce); ``pointuse`` (an event's
trace point, a record without one) and ``pointneeds`` (why each point is enabled,
checked against the attack corpus). See docs/observer.md.
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

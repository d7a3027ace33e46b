"""Turn one trace datagram into a typed, frozen :class:`TraceEvent`.

Callers: ``farm.observe.sink`` (once per datagram, on the connection's thread),
``farm.observe.spool`` (decoding a record as a stream, put in time order by
:func:`in_time_order`) and the observer's classifiers, which read ``TraceEvent`` and
nothing lower. Decoding goes
through ``farm.observe.wire`` with the schema tables of ``farm.observe.points``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from farm.observe.points import (
    MESSAGES,
    RAW_FS_SYSCALLS,
    RAW_SYSCALLS,
    SockAddr,
    parse_sockaddr,
)
from farm.observe.wire import Header, decode


class Context(BaseModel):
    """``gvisor.common.ContextData``: who made the call. Fields not requested in the
    point's ``context_fields`` (or zero, which proto3 omits) keep their defaults."""

    model_config = ConfigDict(frozen=True)

    time_ns: int = 0
    thread_id: int = 0
    thread_start_time_ns: int = 0
    thread_group_id: int = 0
    thread_group_start_time_ns: int = 0
    container_id: str = ""
    cwd: str = ""
    process_name: str = ""
    credentials: dict[str, int] = Field(default_factory=dict)


class TraceEvent(BaseModel):
    """One event gVisor's Sentry recorded, as farm's observer sees it.

    ``fields`` holds the message's own fields by proto name (for example ``pathname``,
    ``flags``, ``exit`` = ``{"result": …, "errorno": …}``); zero values are absent.
    ``container_id`` is the context's, or else the one learned earlier on the same
    connection. ``dropped`` is gVisor's running count of events it could not send on
    this connection, as of this event.
    """

    model_config = ConfigDict(frozen=True)

    kind: str
    message_type: int
    connection: int
    container_id: str
    context: Context
    fields: dict[str, Any]
    dropped: int = 0

    @property
    def errno(self) -> int:
        """The syscall's errno (0 on success or for non-syscall events)."""
        return int(self.fields.get("exit", {}).get("errorno", 0))

    @property
    def sysno(self) -> int:
        return int(self.fields.get("sysno", 0))

    @property
    def syscall_name(self) -> str:
        """Name of a raw ``syscall/sysno/N`` event's syscall, or ``sysno/N``."""
        name = RAW_SYSCALLS.get(self.sysno) or RAW_FS_SYSCALLS.get(self.sysno)
        return name or f"sysno/{self.sysno}"

    def sockaddr(self) -> SockAddr | None:
        """The decoded ``address`` of a connect or bind event, else None."""
        raw = self.fields.get("address")
        return parse_sockaddr(raw) if isinstance(raw, bytes) else None


def to_event(
    header: Header, payload: bytes, *, connection: int, container_id: str = ""
) -> TraceEvent:
    """Decode ``payload`` by the header's message type.

    An unknown message type (a newer gVisor) becomes an event of kind
    ``message_<N>`` with no fields rather than an error, so it stays visible.
    Raises farm.observe.wire.DecodeError if the payload is malformed.
    """
    kind, schema = MESSAGES.get(header.message_type, (f"message_{header.message_type}", {}))
    fields = decode(payload, schema)
    context = Context(**fields.pop("context_data", {}))
    return TraceEvent(
        kind=kind,
        message_type=header.message_type,
        connection=connection,
        container_id=context.container_id or container_id,
        context=context,
        fields=fields,
        dropped=header.dropped,
    )


#: Events held back to put a stream in time order. gVisor sends each event from the
#: task that made it, right after it, so one task's events (and what they cause) are
#: in order; tasks running at once interleave by a few events. This bounds the memory
#: that reordering takes (about 3.3 KB per held event); an event later than this many
#: newer ones is passed on where it arrived.
REORDER_WINDOW = 4096


def in_time_order(
    events: Iterable[TraceEvent], window: int = REORDER_WINDOW
) -> Iterator[TraceEvent]:
    """``events`` sorted by ``context.time_ns`` within a sliding window of ``window``
    events (a stream shorter than the window comes out fully sorted); ties keep their
    order of arrival."""
    held: list[tuple[int, int, TraceEvent]] = []
    for seq, event in enumerate(events):
        heapq.heappush(held, (event.context.time_ns, seq, event))
        if len(held) > window:
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]

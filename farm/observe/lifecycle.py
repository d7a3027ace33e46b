"""Which container a trace datagram belongs to, and when a container's record is over.

Callers: ``farm.observe.spool``'s :class:`~farm.observe.spool.SpoolWriter`, once per
datagram. Under containerd-shim-runsc-v1 a Kubernetes pod is ONE gVisor sandbox: the
pause container, the build init container and the collector are sub-containers of it
and share one trace connection. Verified with runsc 0.0~20240729: every event's
context carries its own task's container id, a ``container/start`` event's context is
the container's init task, and when that init exits, gVisor kills the rest of the
container's PID namespace *after* the init's own ``sentry/task_exit``. So a record is
split by each event's container id, and is over once its init has exited and so has
every task of it that the trace saw start (:class:`LiveTasks`); ending it at the init's
exit alone would lose what its killed children did last.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from farm.observe.events import to_event
from farm.observe.points import MessageType
from farm.observe.wire import DecodeError, Header, first_len_field

#: Every gVisor point message has its ContextData as field 1; the container id is its
#: field 6 (farm.observe.points.CONTEXT_DATA).
_CONTEXT, _CONTAINER_ID = 1, 6
#: The messages that start or end a task: decoded in full, the rest only peeked at.
LIFECYCLE = frozenset(
    {MessageType.CONTAINER_START, MessageType.SENTRY_CLONE, MessageType.SENTRY_TASK_EXIT}
)


#: The context as gVisor lays it out: varint fields 1-5 (times and thread ids), then
#: the container id (field 6, LEN) with its length. Matched in C, not byte by byte in
#: Python: the observer runs this once per datagram. Anything else takes the full path.
_CONTEXT_HEAD = re.compile(
    rb"(?:[\x08\x10\x18\x20\x28][\x80-\xff]{0,9}[\x00-\x7f])*\x32([\x00-\x7f]|[\x80-\xff][\x00-\x7f])"
)


def container_of(payload: bytes) -> bytes:
    """The container id in a message's context, as bytes, without decoding the rest;
    b"" if the message has none or does not parse (the caller cannot attribute it)."""
    try:
        context = first_len_field(payload, _CONTEXT)
        if context is None:
            return b""
        head = _CONTEXT_HEAD.match(context)
        if head is None:
            return first_len_field(context, _CONTAINER_ID) or b""
    except DecodeError:
        return b""
    size = head.group(1)
    length = size[0] if len(size) == 1 else (size[0] & 0x7F) | size[1] << 7
    start = head.end()
    return context[start : start + length] if start + length <= len(context) else b""


@dataclass
class LiveTasks:
    """One container's tasks as its trace showed them, keyed by start time: a task
    keeps its start time through ``execve`` from a non-leader thread, which changes its
    thread id. A multiset, so two tasks started in the same nanosecond stay two.

    Over (:attr:`over`) when the init was seen to start and no task it knows of is
    alive. A task whose ``clone`` event gVisor dropped is unknown here; the drop itself
    makes the record lossy (farm.observe.spool counts it into every open record).
    """

    started: bool = False
    alive: Counter[int] = field(default_factory=Counter)

    def see(self, header: Header, payload: bytes) -> bool:
        """Account one lifecycle datagram; True if the container just ended."""
        if header.message_type not in LIFECYCLE:
            return False
        try:
            event = to_event(header, payload, connection=0)
        except DecodeError:
            return False  # counted as unparseable by the reader; the record stays open
        if event.kind == "container_start":
            self.started = True
            self.alive[event.context.thread_start_time_ns] += 1
        elif event.kind == "clone":
            self.alive[int(event.fields.get("created_thread_start_time_ns", 0))] += 1
        else:  # task_exit
            key = event.context.thread_start_time_ns
            if self.alive[key] <= 1:
                self.alive.pop(key, None)
            else:
                self.alive[key] -= 1
            return self.over
        return False

    @property
    def over(self) -> bool:
        return self.started and not self.alive

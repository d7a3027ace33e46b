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


def container_of(payload: bytes) -> str:
    """The container id in a message's context without decoding the rest; "" if the
    message has none or does not parse (the caller then cannot attribute it)."""
    try:
        context = first_len_field(payload, _CONTEXT)
        raw = first_len_field(context, _CONTAINER_ID) if context is not None else None
    except DecodeError:
        return ""
    return raw.decode("utf-8", "backslashreplace") if raw else ""


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

"""Which trace point an event came from, and a record as it would read without a point.

Callers: ``tests/pointreplay.py`` (the attack corpus replayed with one point left out,
by ``bench/points.py`` and ``tests/unit/test_point_needs.py``) and
``farm.observe.pointneeds``'s checks. Issue 14: a point is enabled only if an attack
of the corpus, or a threat written down in :data:`farm.observe.pointneeds.NEEDS`,
needs it.

gVisor's events do not name their point: it is read back from the message kind, the
syscall number and, for raw ``syscall/sysno/N`` points, whether the event carries the
syscall's ``exit`` (the enter event has none).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from farm.observe.events import Context, TraceEvent

#: Message kinds of the non-syscall points (farm.observe.points.MESSAGES).
SENTRY_POINTS = {
    "container_start": "container/start",
    "clone": "sentry/clone",
    "exec": "sentry/execve",
    "exit_notify_parent": "sentry/exit_notify_parent",
    "task_exit": "sentry/task_exit",
}
#: x86-64 numbers of the named syscall points farm may enable (their events share a
#: message kind: open, openat and creat all send ``open``).
NAMED_SYSCALLS = {
    2: "open",
    41: "socket",
    42: "connect",
    49: "bind",
    85: "creat",
    105: "setuid",
    106: "setgid",
    117: "setresuid",
    119: "setresgid",
    161: "chroot",
    257: "openat",
}


def point_of(event: TraceEvent) -> str:
    """The name of the trace point that sent ``event`` (as in ``PointSpec.name``)."""
    if event.kind in SENTRY_POINTS:
        return SENTRY_POINTS[event.kind]
    phase = "exit" if "exit" in event.fields else "enter"
    if event.kind == "syscall":
        return f"syscall/sysno/{event.sysno}/{phase}"
    name = NAMED_SYSCALLS.get(event.sysno, f"sysno{event.sysno}")
    return f"syscall/{name}/{phase}"


def without(events: Iterable[TraceEvent], point: str) -> Iterator[TraceEvent]:
    """``events`` as gVisor would have sent them with ``point`` disabled.

    Its events are left out. A raw *enter* point takes more with it: gVisor fills a raw
    exit event's context from the enter point's fields (docs/observer.md, "Raw syscall
    points"), so without it the exits of that syscall arrive with no context at all.
    """
    parts = point.split("/")
    raw_enter = parts[:2] == ["syscall", "sysno"] and parts[-1] == "enter"
    anonymous = f"syscall/sysno/{parts[2]}/exit" if raw_enter else None
    for event in events:
        name = point_of(event)
        if name == point:
            continue
        if name == anonymous:
            event = event.model_copy(update={"context": Context()})
        yield event

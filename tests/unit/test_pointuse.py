"""farm.observe.pointuse: an event's trace point read back from its kind, syscall number
and phase; and a record without one point, as gVisor would have sent it."""

from __future__ import annotations

import pytest

from farm.observe.events import Context, TraceEvent
from farm.observe.points import DEFAULT_POINTS
from farm.observe.pointuse import point_of, without


def ev(kind: str, **fields: object) -> TraceEvent:
    ctx = Context(time_ns=5, thread_group_id=7, thread_id=7, cwd="/src", process_name="p")
    return TraceEvent(
        kind=kind, message_type=0, connection=1, container_id="c", context=ctx, fields=fields
    )


@pytest.mark.parametrize(
    ("event", "point"),
    [
        (ev("container_start", id="c"), "container/start"),
        (ev("clone", created_thread_group_id=8), "sentry/clone"),
        (ev("exec", binary_path="/bin/sh"), "sentry/execve"),
        (ev("task_exit"), "sentry/task_exit"),
        (ev("open", sysno=257, exit={}), "syscall/openat/exit"),
        (ev("open", sysno=2, exit={"errorno": 13}), "syscall/open/exit"),
        (ev("open", sysno=85, exit={}), "syscall/creat/exit"),
        (ev("socket", sysno=41, exit={"result": 3}), "syscall/socket/exit"),
        (ev("connect", sysno=42, exit={}), "syscall/connect/exit"),
        (ev("bind", sysno=49, exit={}), "syscall/bind/exit"),
        (ev("setid", sysno=105, exit={}), "syscall/setuid/exit"),
        (ev("setid", sysno=106, exit={}), "syscall/setgid/exit"),
        (ev("setresid", sysno=117, exit={}), "syscall/setresuid/exit"),
        (ev("setresid", sysno=119, exit={}), "syscall/setresgid/exit"),
        (ev("chroot", sysno=161, exit={}), "syscall/chroot/exit"),
        # raw points: the enter event has no exit (a successful exit is an empty one)
        (ev("syscall", sysno=165, arg1=1), "syscall/sysno/165/enter"),
        (ev("syscall", sysno=165, exit={}), "syscall/sysno/165/exit"),
    ],
)
def test_the_point_of_an_event(event: TraceEvent, point: str) -> None:
    assert point_of(event) == point


def test_every_enabled_point_is_one_an_event_can_name() -> None:
    # A point point_of cannot name would look as if it never sent anything.
    names = {p.name for p in DEFAULT_POINTS}
    nameable = {"container/start", "sentry/clone", "sentry/execve", "sentry/task_exit"}
    for name in names - nameable:
        kind, number, *rest = name.split("/")[1:]
        assert kind == "sysno" or (number == "exit" and not rest), name


def test_without_a_point_its_events_are_gone() -> None:
    events = [ev("open", sysno=257, exit={}), ev("open", sysno=2, exit={}), ev("task_exit")]
    assert [point_of(e) for e in without(events, "syscall/open/exit")] == [
        "syscall/openat/exit",
        "sentry/task_exit",
    ]


def test_without_a_raw_enter_point_its_exits_lose_their_context() -> None:
    # gVisor fills a raw exit's context from the enter point's fields (docs/observer.md).
    events = [
        ev("syscall", sysno=165, arg1=1),
        ev("syscall", sysno=165, exit={"errorno": 1}),
        ev("syscall", sysno=272, exit={}),
    ]
    left = list(without(events, "syscall/sysno/165/enter"))
    assert [(point_of(e), e.context.thread_group_id) for e in left] == [
        ("syscall/sysno/165/exit", 0),
        ("syscall/sysno/272/exit", 7),
    ]
    assert left[0].fields == events[1].fields and left[0].container_id == "c"

"""One trace connection serves a whole pod (one gVisor sandbox, several containers):
the daemon keeps one record per container, split by each event's own container id, and
ends a container's record when the container is over, while the sandbox runs on.

A private daemon and a fake runsc peer on a real socket; the datagrams are gVisor's
wire format, shaped like what runsc 0.0~20240729 sent for a pod (see
tests/e2e/test_observe_pod.py for the real thing).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.observe.daemon import ObserverDaemon, ObserverPaths
from farm.observe.lifecycle import container_of
from farm.observe.points import MessageType
from farm.observe.spool import finished_record, read_observation
from farm.observe.wire import encode_field, encode_header

from .test_observe_sink import peer


@pytest.fixture
def paths() -> Iterator[ObserverPaths]:
    with tempfile.TemporaryDirectory(prefix="farm-pod-") as d:
        yield ObserverPaths(socket=Path(d) / "observer.sock", spool=Path(d) / "spool")


def ctx(container: str, tid: int, *, group: int = 0) -> bytes:
    """A context with thread ids and start times (tid * 1000 ns: unique per task)."""
    group = group or tid
    return encode_field(1, ctx_body(container, tid, group))


def ctx_body(container: str, tid: int, group: int) -> bytes:
    return (
        encode_field(2, tid)
        + encode_field(3, tid * 1000)
        + encode_field(4, group)
        + encode_field(5, group * 1000)
        + encode_field(6, container)
    )


def start(container: str, tid: int, dropped: int = 0) -> bytes:
    body = ctx(container, tid) + encode_field(2, container)
    return encode_header(MessageType.CONTAINER_START, dropped) + body


def clone(container: str, tid: int, child: int, *, thread: bool = False) -> bytes:
    group = tid if thread else child
    body = ctx(container, tid) + encode_field(3, child) + encode_field(4, group)
    body += encode_field(5, child * 1000)
    return encode_header(MessageType.SENTRY_CLONE) + body


def exit_(container: str, tid: int, *, group: int = 0, dropped: int = 0) -> bytes:
    body = ctx(container, tid, group=group) + encode_field(2, 0)
    return encode_header(MessageType.SENTRY_TASK_EXIT, dropped) + body


def opened(container: str, tid: int, path: str, dropped: int = 0) -> bytes:
    body = ctx(container, tid) + encode_field(6, path) + encode_field(4, -100)
    return encode_header(MessageType.SYSCALL_OPEN, dropped) + body


def paths_of(container: str, spool: Path) -> list[str]:
    seen = read_observation(spool, container, timeout=5).whole()
    return [e.fields["pathname"] for e in seen.events if e.kind == "open"]


def wait_finished(spool: Path, container: str) -> None:
    deadline = time.monotonic() + 5
    while finished_record(spool, container, consume=False) is None:
        assert time.monotonic() < deadline, f"{container}'s record never ended"
        time.sleep(0.02)


def test_each_container_of_a_pod_gets_its_own_record_complete_at_its_init_exit(
    paths: ObserverPaths,
) -> None:
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        assert pod.recv(100) == b"\x08\x01"
        for datagram in (
            start("pause", 1),
            start("build", 2),
            opened("build", 2, "/build/1"),
            clone("build", 2, 3),
            opened("build", 3, "/build/child"),
            exit_("build", 3),
            exit_("build", 2),  # the build's init: its record ends here
            start("collector", 4),
            opened("collector", 4, "/out/artifact"),
        ):
            pod.send(datagram)
        wait_finished(paths.spool, "build")
        # The sandbox runs on: the pause's and the collector's records are still open.
        assert finished_record(paths.spool, "collector") is None
        assert finished_record(paths.spool, "pause") is None
        build = read_observation(paths.spool, "build", timeout=0).whole()
        pod.send(opened("collector", 4, "/out/more"))
        pod.send(exit_("collector", 4))
        wait_finished(paths.spool, "collector")
        assert finished_record(paths.spool, "pause") is None
    assert build.complete and build.lost == 0
    assert [e.fields.get("pathname") for e in build.events if e.kind == "open"] == [
        "/build/1",
        "/build/child",
    ]
    assert {e.container_id for e in build.events} == {"build"}
    assert paths_of("collector", paths.spool) == ["/out/artifact", "/out/more"]
    # The pause ran until the sandbox went: its record ended at the hang-up.
    assert read_observation(paths.spool, "pause", timeout=0).whole().complete


def test_a_record_waits_for_the_tasks_its_init_left_behind(paths: ObserverPaths) -> None:
    """gVisor kills a container's PID namespace after its init's task_exit: what the
    killed tasks did last arrives after it, and belongs in the record."""
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        for datagram in (
            start("build", 2),
            clone("build", 2, 3),  # a background process
            clone("build", 3, 5, thread=True),  # and a thread of it
            exit_("build", 2),  # the init exits first
        ):
            pod.send(datagram)
        time.sleep(0.3)
        assert finished_record(paths.spool, "build") is None
        pod.send(opened("build", 5, "/etc/shadow"))
        pod.send(exit_("build", 5, group=3))
        time.sleep(0.3)
        assert finished_record(paths.spool, "build") is None
        pod.send(exit_("build", 3))
        wait_finished(paths.spool, "build")
        assert paths_of("build", paths.spool) == ["/etc/shadow"]


def test_a_drop_counts_against_every_record_open_then_and_only_those(
    paths: ObserverPaths,
) -> None:
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        pod.send(start("pause", 1))
        pod.send(start("build", 2))
        pod.send(opened("build", 2, "/a", dropped=3))  # 3 lost: whose is unknown
        pod.send(exit_("build", 2, dropped=3))
        wait_finished(paths.spool, "build")
        pod.send(start("collector", 4, dropped=3))  # gVisor's count is cumulative
        pod.send(exit_("collector", 4, dropped=5))  # 2 more, after the build ended
        wait_finished(paths.spool, "collector")
        build = read_observation(paths.spool, "build", timeout=0).whole()
        collector = read_observation(paths.spool, "collector", timeout=0).whole()
    assert build.dropped == 3 and collector.dropped == 2


def test_a_drop_reported_by_a_containers_first_event_counts_against_it(
    paths: ObserverPaths,
) -> None:
    """The lost event may have been that container's own container/start (without
    which its record could only end at the hang-up)."""
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        pod.send(opened("build", 2, "/a", dropped=1))
    assert read_observation(paths.spool, "build", timeout=5).whole().dropped == 1


def test_events_after_a_record_ended_make_it_incomplete(paths: ObserverPaths) -> None:
    """A task the trace never saw start (its clone event lost) may act after the
    container's record ended: kept apart, and the record no longer vouches."""
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        pod.send(start("build", 2))
        pod.send(exit_("build", 2))
        wait_finished(paths.spool, "build")
        pod.send(opened("build", 9, "/late"))
        time.sleep(0.3)
        assert finished_record(paths.spool, "build") is None  # the late part is open
    seen = read_observation(paths.spool, "build", timeout=0).whole()
    assert not seen.complete and "after its record had ended" in seen.problem
    assert [e.fields.get("pathname") for e in seen.events if e.kind == "open"] == ["/late"]


def test_a_datagram_naming_no_container_goes_into_every_open_record(
    paths: ObserverPaths,
) -> None:
    bad = encode_header(MessageType.SYSCALL_OPEN) + b"\x0a\x05ab"  # LEN past the end
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        pod.send(start("build", 2))
        pod.send(start("collector", 4))
        pod.send(bad)
    for name in ("build", "collector"):
        seen = read_observation(paths.spool, name, timeout=5).whole()
        assert seen.unparseable == 1 and seen.complete


def test_finished_record_never_waits(paths: ObserverPaths) -> None:
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        pod.send(start("build", 2))
        time.sleep(0.2)
        began = time.monotonic()
        assert finished_record(paths.spool, "build") is None
        assert finished_record(paths.spool, "never-ran") is None
        assert time.monotonic() - began < 0.5


# -- attribution reads the context gVisor wrote, nothing the sandbox chose -------------


def forged(container: str, tid: int, lure: str) -> bytes:
    """An open by ``container`` whose cwd, process name and path all carry ``lure``:
    attacker-chosen strings (a directory name, prctl(PR_SET_NAME), a path)."""
    context = ctx_body(container, tid, tid) + encode_field(8, lure) + encode_field(9, lure[:15])
    body = encode_field(1, context) + encode_field(6, lure) + encode_field(4, -100)
    return encode_header(MessageType.SYSCALL_OPEN) + body


@pytest.mark.parametrize(
    "lure",
    [
        "collector",  # the bare id
        "\x32\x09collector",  # the id as a context field would encode it
        "\x0a\x0b\x32\x09collector",  # and wrapped as a whole context
        "x" * 300,  # a long cwd: a two-byte length before the real id would be wrong
    ],
)
def test_a_sandbox_cannot_move_its_events_into_another_containers_record(
    paths: ObserverPaths, lure: str
) -> None:
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        pod.send(start("build", 2))
        pod.send(start("collector", 4))
        pod.send(forged("build", 2, lure))
        pod.send(exit_("build", 2))
        pod.send(exit_("collector", 4))
        wait_finished(paths.spool, "collector")
        collector = read_observation(paths.spool, "collector", timeout=0).whole()
        build = read_observation(paths.spool, "build", timeout=5).whole()
    assert [e.kind for e in collector.events] == ["container_start", "task_exit"]
    assert [e.fields.get("pathname") for e in build.events if e.kind == "open"] == [lure]


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (ctx_body("box", 7, 7), b"box"),  # gVisor's order: the fast path
        (encode_field(6, "b" * 200) + encode_field(2, 7), b"b" * 200),  # id first, 2-byte length
        (encode_field(8, "/cwd") + encode_field(6, "box"), b"box"),  # another order: full path
        (encode_field(2, 7), b""),  # no container id requested
        (encode_field(2, 7) + b"\x32\x05bo", b""),  # truncated
        (encode_field(6, 5), b""),  # the right number, the wrong wire type
    ],
)
def test_container_of_reads_the_context_as_protobuf(context: bytes, expected: bytes) -> None:
    payload = encode_field(1, context) + encode_field(6, "/path")
    assert container_of(payload) == expected
    assert container_of(b"\x0a\x40" + context) == b""  # the context runs past the end

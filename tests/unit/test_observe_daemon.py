"""The host observer daemon and its spool, against fake runsc peers on a real socket."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.observe.daemon import (
    HostObserver,
    ObserverBusy,
    ObserverDaemon,
    ObserverPaths,
    daemon_running,
)
from farm.observe.points import MessageType
from farm.observe.spool import read_observation
from farm.observe.wire import encode_field, encode_header

from .test_observe_sink import open_event, peer


@pytest.fixture
def paths() -> Iterator[ObserverPaths]:
    # Short: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="farm-obsd-") as d:
        yield ObserverPaths(socket=Path(d) / "observer.sock", spool=Path(d) / "spool")


def send_all(path: Path, container: str, pathnames: list[str], extra: list[bytes] = ()) -> None:
    with peer(path) as s:
        assert s.recv(100) == b"\x08\x01"
        for name in pathnames:
            s.send(open_event(name, container=container))
        for datagram in extra:
            s.send(datagram)


def test_each_container_gets_only_its_own_events(paths: ObserverPaths) -> None:
    with ObserverDaemon(paths):
        a, b = peer(paths.socket), peer(paths.socket)  # two sandboxes at once
        for s in (a, b):
            s.recv(100)
        for n in range(30):
            a.send(open_event(f"/a/{n}", container="box-a"))
            b.send(open_event(f"/b/{n}", container="box-b"))
        a.close()
        seen_a = read_observation(paths.spool, "box-a", timeout=5).whole()
        assert not read_observation(paths.spool, "box-b", timeout=0.3).whole().complete  # b is open
        b.close()
        seen_b = read_observation(paths.spool, "box-b", timeout=5).whole()
    assert [e.fields["pathname"] for e in seen_a.events] == [f"/a/{n}" for n in range(30)]
    assert [e.fields["pathname"] for e in seen_b.events] == [f"/b/{n}" for n in range(30)]
    assert seen_a.complete and seen_b.complete and seen_a.lost == 0
    assert list(paths.spool.glob("box-*")) == []  # collected records are removed


def test_drops_and_unparseable_datagrams_are_counted(paths: ObserverPaths) -> None:
    bad = encode_header(MessageType.SYSCALL_OPEN) + b"\x0a\x05ab"  # LEN past the end
    with ObserverDaemon(paths):
        with peer(paths.socket) as s:
            s.recv(100)
            s.send(open_event("/x", container="box"))
            s.send(bad)
            s.send(open_event("/y", container="box", dropped=4))
            s.send(encode_header(200, dropped=4) + encode_field(1, 1))  # no schema for 200
        seen = read_observation(paths.spool, "box", timeout=5).whole()
    assert (seen.dropped, seen.unparseable, seen.unknown_types) == (4, 1, 1)
    assert [e.kind for e in seen.events] == ["open", "open", "message_200"]


def test_over_the_cap_is_counted_not_kept(paths: ObserverPaths) -> None:
    daemon = ObserverDaemon(paths)
    daemon._writer.max_bytes = 200
    with daemon:
        send_all(paths.socket, "box", [f"/{n}" for n in range(20)])
        seen = read_observation(paths.spool, "box", timeout=5).whole()
    assert seen.overflow > 0 and len(seen.events) + seen.overflow == 20


def test_missing_record_is_incomplete_not_an_error(paths: ObserverPaths) -> None:
    with ObserverDaemon(paths):
        seen = read_observation(paths.spool, "never-ran", timeout=0.2).whole()
    assert not seen.complete and "no trace connection" in seen.problem
    assert not read_observation(paths.spool, "../etc", timeout=0).whole().complete


def test_a_container_id_cannot_name_a_path_outside_the_spool(paths: ObserverPaths) -> None:
    with ObserverDaemon(paths):
        send_all(paths.socket, "../../escape", ["/x"])
        assert (
            read_observation(paths.spool, "invalid-id", timeout=5, consume=False).whole().complete
        )
    assert {p.name for p in paths.spool.iterdir()} <= {"invalid-id.1.trace", "invalid-id.1.meta"}
    assert not (paths.spool.parent.parent / "escape.1.trace").exists()


def test_only_one_daemon_serves_a_socket(paths: ObserverPaths) -> None:
    assert not daemon_running(paths)
    with ObserverDaemon(paths):
        assert daemon_running(paths)
        assert paths.pid.read_text().strip() == str(os.getpid())
        with pytest.raises(ObserverBusy):
            ObserverDaemon(paths).start()
    assert not daemon_running(paths) and not paths.socket.exists()


def test_no_daemon_means_no_listener(paths: ObserverPaths) -> None:
    # What runsc relies on to fail closed: nobody accepts on the socket.
    with ObserverDaemon(paths):
        pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s, pytest.raises(OSError):
        s.connect(str(paths.socket))


def test_host_observer_starts_one_daemon_on_demand(paths: ObserverPaths) -> None:
    observers = [HostObserver(paths, collect_timeout=5) for _ in range(2)]
    observers[0].ready()
    try:
        pid = int(paths.pid.read_text())
        observers[1].ready()  # already running: no second daemon
        assert int(paths.pid.read_text()) == pid
        send_all(paths.socket, "box", ["/etc/shadow"])
        seen = observers[1].collect("box").whole()
        assert [e.fields["pathname"] for e in seen.events] == ["/etc/shadow"]
    finally:
        os.kill(pid, signal.SIGTERM)  # the daemon this test started, by its pid
    deadline = time.monotonic() + 10
    while daemon_running(paths) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not daemon_running(paths)

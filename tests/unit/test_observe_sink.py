"""TraceSink against a fake runsc peer on a real SEQPACKET socket (no sandbox needed)."""

from __future__ import annotations

import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import InfrastructureError
from farm.observe import sink as sink_module
from farm.observe.events import TraceEvent
from farm.observe.points import MessageType
from farm.observe.sink import TraceSink
from farm.observe.wire import encode_field, encode_header
from tests.recorder import Recorder


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 108-byte limit of a unix socket path.
    with tempfile.TemporaryDirectory(prefix="farm-obs-") as d:
        yield Path(d) / "trace.sock"


def peer(path: Path, version: int = 1) -> socket.socket:
    """Connect and handshake as runsc's remote sink does."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(str(path))
    s.send(encode_field(1, version))
    return s


def open_event(path: str, container: str = "c1", dropped: int = 0) -> bytes:
    ctx = encode_field(6, container) + encode_field(4, 7)
    body = encode_field(1, ctx) + encode_field(6, path) + encode_field(4, -100)
    return encode_header(MessageType.SYSCALL_OPEN, dropped) + body


def test_handshake_and_delivery(sock_path: Path) -> None:
    rec = Recorder()
    with TraceSink(sock_path, rec) as sink:
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
        with peer(sock_path) as s:
            assert s.recv(100) == b"\x08\x01"  # Handshake{version=1}
            s.send(open_event("/etc/shadow"))
        assert sink.wait_idle(5)
        stats = sink.stats()
    assert not sock_path.exists()
    assert [(e.kind, e.fields["pathname"], e.fields["fd"]) for e in rec.events] == [
        ("open", "/etc/shadow", -100)
    ]
    assert rec.events[0].container_id == "c1"
    assert rec.events[0].context.thread_group_id == 7
    assert (stats.connections, stats.open_connections, stats.events) == (1, 0, 1)


def test_connection_remembers_its_container_id(sock_path: Path) -> None:
    rec = Recorder()
    anonymous = encode_header(MessageType.SYSCALL_RAW) + encode_field(4, 165)
    with TraceSink(sock_path, rec) as sink, peer(sock_path) as s:
        s.recv(100)
        s.send(anonymous)  # before any container id is known
        s.send(open_event("/a", container="box"))
        s.send(anonymous)
        s.shutdown(socket.SHUT_WR)
        assert sink.wait_idle(5)
    assert [e.container_id for e in rec.events] == ["", "box", "box"]


def test_dropped_count_is_accumulated_across_wraparound(sock_path: Path) -> None:
    rec = Recorder()
    with TraceSink(sock_path, rec) as sink:
        with peer(sock_path) as s:
            s.recv(100)
            for dropped in (0, 5, 5, 2**32 - 2, 1):  # gVisor's counter wraps at 2**32
                s.send(open_event("/x", dropped=dropped))
        assert sink.wait_idle(5)
        assert sink.stats().dropped == 2**32 - 2 + 3
        assert [e.dropped for e in rec.events] == [0, 5, 5, 2**32 - 2, 1]


def test_dropped_counts_are_per_connection(sock_path: Path) -> None:
    with TraceSink(sock_path, Recorder()) as sink:
        with peer(sock_path) as a, peer(sock_path) as b:
            a.recv(100)
            b.recv(100)
            a.send(open_event("/x", dropped=4))
            b.send(open_event("/x", dropped=3))
        assert sink.wait_idle(5)
        assert sink.stats().dropped == 7


def test_unparseable_datagrams_are_counted_not_fatal(sock_path: Path) -> None:
    rec = Recorder()
    bad = [
        b"\x08\x00",  # shorter than the header
        bytes.fromhex("0400070000000000"),  # header size below 8
        encode_header(MessageType.SYSCALL_OPEN) + b"\x0a\x05ab",  # LEN past the end
        encode_header(MessageType.SYSCALL_OPEN) + encode_field(6, 5),  # pathname as varint
    ]
    with TraceSink(sock_path, rec) as sink:
        with peer(sock_path) as s:
            s.recv(100)
            for datagram in bad:
                s.send(datagram)
            s.send(open_event("/still/read"))
        assert sink.wait_idle(5)
        stats = sink.stats()
    assert (stats.unparseable, stats.events) == (4, 1)
    assert rec.events[0].fields["pathname"] == "/still/read"


def test_truncated_datagram_is_counted(sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_module, "_DATAGRAM_MAX", 64)
    rec = Recorder()
    with TraceSink(sock_path, rec) as sink:
        with peer(sock_path) as s:
            s.recv(100)
            s.send(open_event("/" + "x" * 200))
            s.send(open_event("/short"))
        assert sink.wait_idle(5)
        assert sink.stats().unparseable == 1
    assert [e.fields["pathname"] for e in rec.events] == ["/short"]


def test_unknown_message_type_is_delivered_and_counted(sock_path: Path) -> None:
    rec = Recorder()
    with TraceSink(sock_path, rec) as sink:
        with peer(sock_path) as s:
            s.recv(100)
            s.send(encode_header(200) + encode_field(1, 1))
        assert sink.wait_idle(5)
        assert sink.stats().unknown_types == 1
    assert rec.events[0].kind == "message_200"


@pytest.mark.parametrize("version", [0, None])
def test_bad_or_missing_handshake_closes_the_connection(
    sock_path: Path, version: int | None
) -> None:
    with TraceSink(sock_path, Recorder(), handshake_timeout=0.2) as sink:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(5)
            s.connect(str(sock_path))
            if version is not None:
                s.send(encode_field(1, version))
            assert s.recv(100) == b""  # closed without our handshake: runsc fails
        assert sink.wait_idle(5)
        assert sink.stats().handshake_failures == 1


def test_callback_errors_are_counted_and_reading_goes_on(sock_path: Path) -> None:
    seen: list[str] = []

    def flaky(event: TraceEvent) -> None:
        seen.append(event.fields["pathname"])
        if len(seen) == 1:
            raise RuntimeError("classifier bug")

    with TraceSink(sock_path, flaky) as sink:
        with peer(sock_path) as s:
            s.recv(100)
            s.send(open_event("/1"))
            s.send(open_event("/2"))
        assert sink.wait_idle(5)
        assert (sink.stats().callback_errors, sink.stats().events) == (1, 2)
    assert seen == ["/1", "/2"]


def test_many_connections_in_parallel(sock_path: Path) -> None:
    rec = Recorder()
    with TraceSink(sock_path, rec) as sink:
        peers = [peer(sock_path) for _ in range(5)]
        for i, s in enumerate(peers):
            s.recv(100)
            for n in range(20):
                s.send(open_event(f"/{n}", container=f"box{i}"))
        for s in peers:
            s.close()
        assert sink.wait_idle(5)
        assert sink.stats().connections == 5
    by_box = {e.container_id for e in rec.events}
    assert by_box == {f"box{i}" for i in range(5)}
    assert len(rec.events) == 100
    assert len({e.connection for e in rec.events}) == 5


def test_close_drains_queued_events_then_cuts_open_connections(sock_path: Path) -> None:
    rec = Recorder()
    sink = TraceSink(sock_path, rec).start()
    with peer(sock_path) as s:
        s.recv(100)
        for n in range(50):
            s.send(open_event(f"/{n}"))  # queued in the socket before close() below
        assert not sink.wait_idle(0.1)  # the peer is still connected
        sink.close()
        assert s.recv(100) == b""  # we hung up on it
    assert len(rec.events) == 50
    assert not [t for t in threading.enumerate() if t.name.startswith("trace-")]
    sink.close()  # a second close is harmless


def test_start_fails_with_an_infrastructure_error(sock_path: Path) -> None:
    sock_path.write_text("taken")
    with pytest.raises(InfrastructureError, match=str(sock_path)):
        TraceSink(sock_path, Recorder()).start()
    with pytest.raises(InfrastructureError, match="too long"):
        TraceSink("/tmp/" + "x" * 200, Recorder()).start()


def test_finished_connection_threads_are_pruned(sock_path: Path) -> None:
    # A long-lived sink serves one connection per build: it must not keep them all.
    with TraceSink(sock_path, Recorder()) as sink:
        for _ in range(5):
            with peer(sock_path) as s:
                s.recv(100)
            assert sink.wait_idle(5)
        assert sink.stats().connections == 5
        assert len(sink._threads) <= 2

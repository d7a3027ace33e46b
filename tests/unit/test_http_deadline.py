"""A registry or archive that trickles its answer is cut off at the deadline.

A real peer on 127.0.0.1 sends one byte at a time, each well inside the socket
timeout, in the body or in the headers: a plain ``resp.read(n)`` (or a header line
read) would wait for it as long as it keeps sending. The test bounds its own wait with
the peer's budget of bytes, not with a clock.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from farm.errors import MirrorSourceError, RegistryUnreachableError
from farm.fetch.registry import HttpCaps, Registry, RegistryClient
from farm.mirror.download import http_get

#: The peer stops after this many trickled bytes (at 0.1 s each: 30 s), far beyond the
#: deadlines below; a client that is not cut off fails by reading a complete answer.
BUDGET = 300


class Trickler:
    def __init__(self, url: str) -> None:
        self.url = url
        #: Set when the peer got its whole answer out: the client waited for all of it.
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None

    def waited_for_all(self) -> bool:
        """Whether the client read the whole trickle (once the peer is done)."""
        assert self.thread is not None
        self.thread.join(timeout=120)
        return self.finished.is_set()


@pytest.fixture(params=["body", "headers"])
def trickler(request: pytest.FixtureRequest) -> Iterator[Trickler]:
    """An HTTP peer that trickles its body (or its headers), then ends the answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    peer = Trickler(f"http://127.0.0.1:{listener.getsockname()[1]}")

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            if request.param == "body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BUDGET)
                trickle = b"x" * BUDGET
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                trickle = b"X-Slow: " + b"y" * (BUDGET - 10) + b"\r\n\r\n"
            for i in range(len(trickle)):
                if stop.is_set():
                    return
                try:
                    conn.sendall(trickle[i : i + 1])
                except OSError:
                    return  # the client hung up: what the test wants
                time.sleep(0.1)
            peer.finished.set()

    peer.thread = threading.Thread(target=serve, daemon=True)
    peer.thread.start()
    yield peer
    stop.set()
    peer.thread.join(timeout=10)
    listener.close()


def test_a_trickling_registry_is_cut_off_at_the_deadline(trickler: Trickler) -> None:
    client = RegistryClient(
        Registry(name="slow", index=f"sparse+{trickler.url}/index/"),
        HttpCaps(timeout_seconds=5, deadline_seconds=1),
    )
    with pytest.raises(RegistryUnreachableError, match="took longer than 1 s"):
        client.download("serde", "1.0.152", "ab" * 32)
    assert not trickler.waited_for_all(), "the client waited for the whole trickle"


def test_a_trickling_archive_is_cut_off_at_the_deadline(trickler: Trickler) -> None:
    with pytest.raises(MirrorSourceError, match="not downloaded within 1 s"):
        http_get(f"{trickler.url}/dists/bookworm/InRelease", 1 << 20, timeout=5, deadline=1)
    assert not trickler.waited_for_all(), "the client waited for the whole trickle"

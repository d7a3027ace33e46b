"""After a response, the server drains what the client still sends before it closes
(farm.httpserver._lingering_close). That drain ran after the handler gave its slot
back and allowed 2 s per read for up to 1 MiB, so an anonymous client could answer
each read with one byte: every such connection kept a thread alive for days, beyond
``max_connections``, until the process could start no thread and its accept loop died.
Real server process, raw sockets; the witness is the server's own thread count."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.httpserver import HttpLimits
from tests import sockets
from tests.sockets import poll, poll_closed, proc_status, trickle

from .apihost import Host, start

CAP = 4
CLIENTS = 40


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    (tmp_path / "src").mkdir()
    limits = HttpLimits(timeout_seconds=600, max_connections=CAP)
    served = start(tmp_path / "home", tmp_path / "src", None, limits)
    yield served
    served.stop()


def answered(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(4096)):
        data += chunk
    return data


def test_a_client_that_keeps_sending_after_its_answer_holds_no_thread_for_long(
    host: Host,
) -> None:
    baseline = proc_status(host.proc.pid, "Threads")
    socks: list[socket.socket] = []
    feeds: list[Callable[[], None]] = []
    try:
        for _ in range(CLIENTS):
            sock = sockets.connect(host.host, host.port, 1)[0]
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answered(sock).split(b" ")[1] in (b"200", b"503")
            socks.append(sock)
            feeds.append(trickle([sock], b"x" * 100_000))
            for feed in feeds:  # one byte each: every drain read gets an answer
                feed()
        assert proc_status(host.proc.pid, "Threads") <= baseline + CAP
        # The drain has a bound of its own, whatever the client keeps sending.
        poll_closed(socks, lambda: [feed() for feed in feeds])
        poll(lambda: host.call("GET", "/healthz")[0] == 200, "answering")
    finally:
        for sock in socks:
            sock.close()

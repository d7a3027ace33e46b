"""Host-side probes for tests of farm's HTTP servers over raw sockets: poll a condition
with a generous bound (never a fixed sleep), tell whether the server closed a socket
without blocking, and read a server process's /proc status (threads, peak RSS)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path


def poll(check: Callable[[], bool], what: str, bound: float = 120, step: float = 0.1) -> None:
    """Until ``check()``; the bound only stops a broken server hanging the suite."""
    end = time.monotonic() + bound
    while not check():
        assert time.monotonic() < end, f"still not {what} after {bound} s"
        time.sleep(step)


def closed(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (EOF or reset), without blocking."""
    try:
        return sock.recv(1 << 16, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def connect(host: str, port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection((host, port)) for _ in range(n)]


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/PID/status, e.g. Threads, or VmHWM (peak RSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def poll_closed(socks: list[socket.socket], feed: Callable[[], None] = lambda: None) -> float:
    """Poll until the server closed every socket, calling ``feed`` each round (to keep
    trickling bytes); the monotonic time the first one was seen closed."""
    first: float | None = None

    def check() -> bool:
        nonlocal first
        feed()
        done = [closed(s) for s in socks]
        if any(done) and first is None:
            first = time.monotonic()
        return all(done)

    poll(check, "closed by the server", step=0.2)
    assert first is not None
    return first


def trickle(socks: list[socket.socket], data: bytes) -> Callable[[], None]:
    """A ``feed`` for :func:`poll_closed`: the next byte of ``data`` to each open socket."""
    sent = 0

    def feed() -> None:
        nonlocal sent
        sent += 1
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(data[sent : sent + 1])

    return feed

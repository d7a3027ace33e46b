"""One HTTP exchange within a byte cap and a deadline that a slow sender cannot stretch.

Callers: ``farm.fetch.registry`` (crates and index files from a registry) and
``farm.mirror.download`` (Debian's archive). A socket timeout alone does not bound an
exchange: every byte that trickles in (in the status line, a header or the body)
restarts it, so a peer sending one byte a second holds the caller for as long as it
likes. :class:`Deadline` shuts the connection's socket down when the deadline passes,
whatever the exchange is doing, and :func:`read_body` reads what has arrived
(``read1``) up to the cap.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from types import TracebackType


class BodyTooLarge(Exception):
    """The body is (or says it is) above the cap."""


class TooSlow(Exception):
    """The deadline passed before the exchange was complete."""


class Deadline:
    """``with Deadline(conn, seconds):`` around request, response and body. Raises
    TooSlow on the way out if the deadline cut the exchange (whatever error the cut
    surfaced as inside)."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.conn, self.fired = conn, threading.Event()
        self.timer = threading.Timer(seconds, self._cut)
        self.timer.daemon = True

    def _cut(self) -> None:
        self.fired.set()
        sock: socket.socket | None = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Deadline:
        self.timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.timer.cancel()
        if self.fired.is_set():
            raise TooSlow() from exc


def read_body(resp: http.client.HTTPResponse, cap: int) -> bytes:
    """The body of ``resp``, at most ``cap`` bytes; raises BodyTooLarge beyond."""
    declared = resp.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge(f"is {declared} bytes, above the {cap} cap")
    chunks, total = [], 0
    while chunk := resp.read1(min(1 << 16, cap + 1 - total) or 1):
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            raise BodyTooLarge(f"sent more than {cap} bytes")
    return b"".join(chunks)

"""A bounded HTTP/1.x server for farm's endpoints, and the one way to read a request path.

Callers: ``farm.api`` (``farm serve``'s API) and ``farm.k8s.artifacts`` (the controller's
artifact endpoint) run a :class:`BoundedServer` with their own :class:`BoundedHandler`
subclass, and both pass every request target through :func:`canonical_path`.

Why not ``ThreadingHTTPServer``: it starts one thread per accepted connection and
waits forever on it, so a client that connects and sends nothing (or trickles its
headers) holds a thread for as long as it likes, and a few thousand of them exhaust the
process. Here one thread accepts connections and reads their request heads without
blocking; a connection gets a handler thread only once its whole head has arrived:

- a head must arrive within ``timeout_seconds`` of the connect, else the socket is
  closed; at most ``max_waiting`` connections wait for theirs (a new one beyond that
  closes the one that has waited longest), and a head is at most 64 KiB;
- at most ``max_connections`` requests are handled at once, counting the short drain
  after each response (at most ``LINGER_SECONDS`` in all); a complete request beyond
  that is answered 503 at once and closed, never queued behind a thread;
- a handler's socket has ``timeout_seconds`` per read and per ``sendall``, so a client
  that stops reading a streamed body is dropped; every connection carries exactly one
  request (``Connection: close``), so an idle keep-alive connection holds nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("farm.http")

MAX_HEAD = 64 << 10
#: Responses are written in pieces of this size; a file body is never read whole.
CHUNK = 64 << 10
_HEAD_END = re.compile(rb"\r?\n\r?\n")
#: How long, in all, a connection is drained after its response before it is closed.
LINGER_SECONDS = 2.0


class HttpLimits(BaseModel):
    """Operator settings of one HTTP endpoint (docs/serve.md, docs/kubernetes.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Seconds a client has to send its request head, and per read or write after it.
    timeout_seconds: float = Field(30, gt=0, le=3600)
    #: Requests handled at once (one thread each); beyond it, 503 at once.
    max_connections: int = Field(64, ge=1, le=4096)
    #: Connections still sending their request head (no thread each); beyond it the
    #: longest-waiting one is closed.
    max_waiting: int = Field(256, ge=1, le=65536)


class PathError(ValueError):
    """A request target farm refuses to interpret (answered 400)."""


# Decoded, these would change how the path splits or what a later reader sees.
_FORBIDDEN_DECODED = set("/\\%?#") | {chr(c) for c in range(0x20)} | {"\x7f"}
_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")


def canonical_path(target: str) -> tuple[str, str]:
    """Split an origin-form request target into its one canonical path and raw query.

    The canonical path is the target's path with each ``%XX`` decoded once, as UTF-8.
    Anything with two readings is refused rather than guessed: a target that is not
    ``/…`` (absolute URL, ``*``), raw bytes outside printable ASCII, backslashes, a
    fragment, a ``%`` not followed by two hex digits, an encoded ``/``, ``\\``, ``%``
    (double encoding), ``?``, ``#`` or control character, and empty (``//``, a trailing
    ``/``) or dot (``.``, ``..``) segments, however spelled. Raises PathError."""
    if not target.startswith("/"):
        raise PathError("the request target must be a path starting with '/'")
    if any(not 0x21 <= ord(c) <= 0x7E for c in target) or "\\" in target or "#" in target:
        raise PathError("the request target must be printable ASCII without '\\' or '#'")
    raw_path, _, query = target.partition("?")
    decoded = bytearray()
    for i, part in enumerate(_ESCAPE.split(raw_path)):  # odd items are the %XX escapes
        if i % 2:
            byte = int(part[1:], 16)
            if chr(byte) in _FORBIDDEN_DECODED:
                raise PathError(f"{part}: an escaped '/', '\\', '%', '?', '#' or control byte")
            decoded.append(byte)
        elif "%" in part:
            raise PathError("'%' must start a %XX escape of two hex digits")
        else:
            decoded += part.encode("ascii")
    try:
        path = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise PathError("the %XX escapes do not decode as UTF-8") from None
    if path != "/" and any(s in ("", ".", "..") for s in path.split("/")[1:]):
        raise PathError("empty, '.' or '..' path segments")
    return path, query


@dataclass
class FileBody:
    """A response body streamed from an open file: ``length`` bytes from its position."""

    file: BinaryIO
    length: int


class _Prefixed(io.RawIOBase):
    """The socket's bytes, after those the accept loop already read (the head)."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self.prefix, self.sock = memoryview(prefix), sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            buffer[:n], self.prefix = self.prefix[:n], self.prefix[n:]
            return n
        return self.sock.recv_into(buffer)


class BoundedHandler(BaseHTTPRequestHandler):
    """Handles the one request of a connection whose head is already read."""

    server: BoundedServer

    def __init__(self, sock: socket.socket, address: Any, server: BoundedServer, head: bytes):
        self._head = head
        super().__init__(sock, address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_Prefixed(self._head, self.connection))

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    @property
    def target(self) -> str:
        """The request target exactly as sent: ``self.path`` is not (http.server
        rewrites a leading ``//``), and a path must be judged as the client wrote it."""
        words = self.requestline.split()
        return words[1] if len(words) >= 2 else ""

    def end_headers(self) -> None:
        self.send_header("Connection", "close")
        super().end_headers()

    def write_body(self, body: bytes | FileBody) -> None:
        """Write ``body`` in CHUNK pieces; a file body is closed afterwards."""
        if isinstance(body, bytes):
            self.wfile.write(body)
            return
        with body.file:
            left = body.length
            while left > 0 and (chunk := body.file.read(min(CHUNK, left))):
                self.wfile.write(chunk)
                left -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def content_length(headers: Any) -> int:
    """A request's body length as one strict reading: -1 unless there is exactly one
    Content-Length of ASCII digits and no Transfer-Encoding. Python's ``int`` would read
    ``+5``, `` 5`` and ``5_0``, and a proxy in front may read a second Content-Length or
    chunked encoding otherwise: every such request is refused rather than guessed."""
    if headers.get_all("Transfer-Encoding"):
        return -1
    values = headers.get_all("Content-Length") or ["0"]
    if len(values) != 1 or not (values[0].isascii() and values[0].isdigit()):
        return -1
    return int(values[0])


def body_length(body: bytes | FileBody) -> int:
    return len(body) if isinstance(body, bytes) else body.length


@dataclass
class _Waiting:
    address: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)


class BoundedServer:
    """Accepts on one thread, hands complete request heads to handler threads."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: Callable[[socket.socket, Any, BoundedServer, bytes], Any],
        limits: HttpLimits | None = None,
    ) -> None:
        self.limits = limits or HttpLimits()
        self.handler = handler
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=128)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._waiting: dict[socket.socket, _Waiting] = {}  # in accept order: oldest first

    # the accept loop

    def serve_forever(self) -> None:
        self._running.set()
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                oldest = next(iter(self._waiting.values()), None)
                wait = max(0.0, oldest.deadline - time.monotonic()) if oldest else None
                for key, _ in sel.select(wait):
                    if key.fileobj is self.socket:
                        self._accept(sel)
                    elif key.fileobj is not self._wake_r:
                        self._read_head(sel, key.fileobj)  # type: ignore[arg-type]
                self._expire(sel)
        finally:
            for sock in list(self._waiting):
                self._drop(sel, sock)
            sel.close()
            self._stopped.set()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors: free the longest-waiting one
                log.warning("accept: %s", exc)
                if self._waiting:
                    self._drop(sel, next(iter(self._waiting)))
                return
            if len(self._waiting) >= self.limits.max_waiting:
                self._drop(sel, next(iter(self._waiting)))
            sock.setblocking(False)
            deadline = time.monotonic() + self.limits.timeout_seconds
            self._waiting[sock] = _Waiting(address, deadline)
            sel.register(sock, selectors.EVENT_READ)

    def _read_head(self, sel: selectors.BaseSelector, sock: socket.socket) -> None:
        waiting = self._waiting[sock]
        try:
            data = sock.recv(MAX_HEAD)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, sock)
            return
        # Scan only the new bytes (and the 3 before, where a terminator may have begun):
        # rescanning the whole head per read costs a trickled 64 KiB head seconds of CPU.
        start = max(len(waiting.head) - 3, 0)
        waiting.head += data
        if _HEAD_END.search(waiting.head, start):
            sel.unregister(sock)
            del self._waiting[sock]
            self._dispatch(sock, waiting)
        elif len(waiting.head) > MAX_HEAD:
            self._refuse(sel, sock, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._waiting and next(iter(self._waiting.values())).deadline <= now:
            self._drop(sel, next(iter(self._waiting)))

    def _drop(self, sel: selectors.BaseSelector, sock: socket.socket) -> None:
        sel.unregister(sock)
        del self._waiting[sock]
        sock.close()

    def _refuse(self, sel: selectors.BaseSelector | None, sock: socket.socket, status: int) -> None:
        """Best effort, never blocking: the status line, then close."""
        phrase = HTTPStatus(status).phrase
        with contextlib.suppress(OSError):
            sock.send(
                f"HTTP/1.1 {status} {phrase}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
        if sel is not None:
            self._drop(sel, sock)
        else:
            sock.close()

    # handler threads

    def _dispatch(self, sock: socket.socket, waiting: _Waiting) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(None, sock, HTTPStatus.SERVICE_UNAVAILABLE)
            return
        sock.setblocking(True)
        sock.settimeout(self.limits.timeout_seconds)
        args = (sock, waiting.address, bytes(waiting.head))
        threading.Thread(target=self._handle, args=args, daemon=True).start()

    def _handle(self, sock: socket.socket, address: Any, head: bytes) -> None:
        try:
            self.handler(sock, address, self, head)
        except (ConnectionError, TimeoutError):
            pass  # the client hung up or stalled: its doing, nothing to report
        except Exception:
            log.exception("error handling a request from %s", address)
        finally:
            try:  # inside the slot: a client must not keep threads beyond the cap
                _lingering_close(sock)
            finally:
                self._slots.release()

    # lifecycle

    def shutdown(self) -> None:
        """Stop the accept loop (from another thread) and wait for it if it runs."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._running.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        for sock in (self.socket, self._wake_r, self._wake_w):
            sock.close()


def _lingering_close(sock: socket.socket) -> None:
    """Close after the client read the response: a request body left unread (refused
    before it was read) would otherwise make the kernel reset the connection, and the
    client could lose the answer. At most 1 MiB and LINGER_SECONDS in all are spent on
    it (a bound per read would let a client that sends a byte now and then keep it)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + LINGER_SECONDS
        left = 1 << 20
        while left > 0 and (wait := end - time.monotonic()) > 0:
            sock.settimeout(wait)
            if not (data := sock.recv(CHUNK)):
                break
            left -= len(data)
    sock.close()

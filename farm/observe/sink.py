"""Serve the unix socket that gVisor's ``remote`` trace sink connects to.

Callers: the sandbox backend, which starts one :class:`TraceSink` before creating a
sandbox, passes :func:`pod_init_config`'s JSON to runsc as ``--pod-init-config``,
and closes the sink after the sandbox is gone; and the e2e tests.

Protocol (gVisor ``pkg/sentry/seccheck/sinks/remote``, verified with runsc
0.0~20240729): runsc connects a ``SOCK_SEQPACKET`` socket when the sandbox is created,
sends ``Handshake{version=1}`` and waits for ours; then every event is one datagram
(see ``farm.observe.wire``). runsc refuses to create the sandbox if nobody listens
here, and farm keeps it that way (no ``ignore_setup_error``): an unobserved build must
not run.

Threads: one accepts connections, one per connection reads, decodes and calls
``on_event``. ``close()`` wakes them all through one pipe; each connection first
drains what is already queued, so no event that reached the socket is lost.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from farm.errors import InfrastructureError
from farm.observe.events import TraceEvent, to_event
from farm.observe.points import DEFAULT_POINTS, HANDSHAKE, PointSpec
from farm.observe.wire import DecodeError, decode, encode_field, split_datagram

PROTOCOL_VERSION = 1
#: gVisor reads the handshake into a 10 KiB buffer; ours is 2 bytes.
_HANDSHAKE_MAX = 10240
#: Larger than any datagram the sender can queue (its SO_SNDBUF, 208 KiB by default),
#: so MSG_TRUNC only ever means a bigger-than-expected message, which we count.
_DATAGRAM_MAX = 1 << 20

#: gVisor's default (0) drops an event as soon as the socket is full: under an open()
#: flood we measured 40-64 % lost, which would let a build hide a connect among the
#: noise. 100 retries stall the writing task instead (at most ~0.9 s per event, so
#: the flood pays, not us) and lost nothing in the same test. See docs/observer.md.
DEFAULT_RETRIES = 100

EventCallback = Callable[[TraceEvent], None]


class RawHandler(Protocol):
    """Takes every datagram undecoded (the host observer daemon spools them to disk).

    ``container_id`` is what the sink has learned so far on this connection ("" until
    the first datagram that names it): the first container, which under Kubernetes is
    the pod's pause. The spool writer therefore reads each datagram's own id instead.
    Called on the connection's thread. ``hangup``'s
    ``finished`` is True only when runsc closed the connection (its sandbox is gone);
    False when the sink cut it (``close()``: a restart or rollout of the daemon) or a
    read failed, so whatever came after is missing.
    """

    def datagram(self, connection: int, container_id: str, data: bytes) -> None: ...

    def hangup(self, connection: int, container_id: str, finished: bool) -> None: ...


def pod_init_config(
    socket_path: str | os.PathLike[str],
    points: Sequence[PointSpec] = DEFAULT_POINTS,
    *,
    retries: int | None = DEFAULT_RETRIES,
) -> dict[str, Any]:
    """The JSON object for ``runsc --pod-init-config=FILE`` (write it with json.dump).

    The session must be named "Default" (gVisor supports only that one). ``retries``
    is how often gVisor retries a full socket (backoff 25 µs doubling to 10 ms)
    before it drops an event; None leaves gVisor's default of 0. runsc rejects
    unknown keys, so nothing else is emitted.
    """
    config: dict[str, Any] = {"endpoint": str(socket_path)}
    if retries is not None:
        config["retries"] = retries
    return {
        "trace_session": {
            "name": "Default",
            "points": [p.to_json() for p in points],
            "sinks": [{"name": "remote", "config": config}],
        }
    }


class SinkStats(BaseModel):
    """Counters of one sink, over all its connections."""

    model_config = ConfigDict(frozen=True)

    connections: int = 0
    open_connections: int = 0
    events: int = 0
    #: Events gVisor reported it had to drop (from the datagram headers).
    dropped: int = 0
    #: Datagrams we received but could not decode (short, truncated, bad protobuf).
    unparseable: int = 0
    #: Datagrams of a message type farm has no schema for (delivered without fields).
    unknown_types: int = 0
    #: Connections closed because the peer's handshake was missing or wrong.
    handshake_failures: int = 0
    callback_errors: int = 0


@dataclass
class _Conn:
    """Per-connection state, touched only by its own thread (plus the lock for stats)."""

    number: int
    sock: socket.socket
    container_id: str = ""
    last_dropped: int = 0
    callback_failed: bool = False
    #: runsc closed the connection itself (end of file), rather than we cutting it.
    finished: bool = False


class TraceSink:
    """Listen at ``path`` for runsc trace connections and feed ``on_event``.

    ``on_event`` runs on the connection's thread; it should be quick, since a slow
    callback backs up the socket and makes gVisor drop (or, with retries, delay)
    events. Its exceptions are logged and counted, never fatal.

    With ``raw``, every datagram goes to ``raw.datagram`` undecoded instead, and the
    sink decodes only until it has learned the connection's container id; whoever
    reads the raw datagrams later decodes and counts them (farm.observe.spool).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_event: EventCallback | None = None,
        *,
        raw: RawHandler | None = None,
        logger: logging.Logger | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._on_event = on_event or (lambda event: None)
        self._raw = raw
        self._log = logger or logging.getLogger(__name__)
        self._handshake_timeout = handshake_timeout
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stats: dict[str, int] = dict.fromkeys(SinkStats.model_fields, 0)
        self._acceptor: threading.Thread | None = None
        # Connection threads; finished ones are pruned on each accept, so a long-lived
        # sink serving many builds does not grow without bound.
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._wake_r = self._wake_w = -1

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> TraceSink:
        """Bind and listen, then accept in a background thread.

        Raises InfrastructureError if the socket cannot be created at ``path``.
        """
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            listener.bind(str(self.path))
            # Only our uid and root (runsc) may connect; the sandbox never sees this path.
            os.chmod(self.path, 0o600)
            listener.listen(16)
        except OSError as e:
            listener.close()
            raise InfrastructureError(
                f"cannot listen for gVisor trace events at {self.path}: {e}; "
                "use a fresh path in a directory farm can write"
            ) from e
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe()
        self._acceptor = self._spawn(self._accept_loop, "trace-accept")
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, drain queued events, join the threads, remove the socket.

        Safe to call twice. Connections still open are cut after their queue drains.
        """
        if self._listener is None:
            return
        os.write(self._wake_w, b"x")  # level-triggered: every poller sees it until closed
        assert self._acceptor is not None  # set together with the listener
        # The accept thread first, so that the list of connection threads is final.
        self._acceptor.join(timeout)
        threads = [self._acceptor, *self._threads]
        for thread in self._threads:
            thread.join(timeout)
        self._listener.close()
        self._listener = None
        self.path.unlink(missing_ok=True)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:  # stuck in a callback: leave the pipe open rather than pull it from under
            self._log.warning("trace sink threads still running after close: %s", alive)
            return
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> TraceSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(**self._stats)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every accepted connection has hung up (the sandbox is gone and
        all its events were delivered). True if so within ``timeout`` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._stats["open_connections"] == 0, timeout)

    # -- threads -----------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    def _wait_readable(self, fd: int, timeout: float | None = None) -> bool:
        """Block until ``fd`` is readable (True) or the sink is closing/timed out (False).

        Readable data wins over the wake pipe, so close() drains before it cuts.
        """
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        ready = dict(poller.poll(None if timeout is None else timeout * 1000))
        return fd in ready

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while self._wait_readable(self._listener.fileno()):
            try:
                sock, _ = self._listener.accept()
            except OSError as e:
                self._log.warning("accepting a trace connection failed: %s", e)
                continue
            with self._lock:
                self._stats["connections"] += 1
                self._stats["open_connections"] += 1
                number = self._stats["connections"]
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(
                self._spawn(self._serve, f"trace-conn-{number}", _Conn(number, sock))
            )

    def _serve(self, conn: _Conn) -> None:
        try:
            if self._handshake(conn):
                self._read_events(conn)
        finally:
            conn.sock.close()
            if self._raw is not None:
                hangup = self._raw.hangup
                self._guarded(conn, "hangup", hangup, conn.number, conn.container_id, conn.finished)
            with self._idle:
                self._stats["open_connections"] -= 1
                self._idle.notify_all()

    def _handshake(self, conn: _Conn) -> bool:
        """Read runsc's Handshake and answer with ours. False (counted) if it is bad."""
        try:
            if not self._wait_readable(conn.sock.fileno(), self._handshake_timeout):
                raise DecodeError("no handshake from runsc in time")
            version = decode(conn.sock.recv(_HANDSHAKE_MAX), HANDSHAKE).get("version", 0)
            if version < PROTOCOL_VERSION:
                raise DecodeError(f"runsc speaks trace protocol {version}, need 1")
            conn.sock.send(encode_field(1, PROTOCOL_VERSION))
        except (OSError, DecodeError) as e:
            self._log.warning("trace connection %d: bad handshake: %s", conn.number, e)
            self._count("handshake_failures")
            return False
        return True

    def _read_events(self, conn: _Conn) -> None:
        buf = bytearray(_DATAGRAM_MAX)
        while self._wait_readable(conn.sock.fileno()):
            try:
                size, _, flags, _ = conn.sock.recvmsg_into([buf])
            except OSError as e:
                self._log.warning("trace connection %d: read failed: %s", conn.number, e)
                return
            if size == 0:
                conn.finished = True  # runsc closed the sink: the sandbox is gone
                return
            if flags & socket.MSG_TRUNC:
                self._count("unparseable")
                continue
            self._handle(conn, bytes(buf[:size]))

    def _handle(self, conn: _Conn, datagram: bytes) -> None:
        if self._raw is None:
            self._decode(conn, datagram)
            return
        if not conn.container_id:
            self._decode(conn, datagram)  # only to learn the container id
        else:
            self._count("events")
        self._guarded(
            conn, "datagram", self._raw.datagram, conn.number, conn.container_id, datagram
        )

    def _guarded(self, conn: _Conn, what: str, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception:
            if not conn.callback_failed:
                self._log.exception("trace %s handler failed", what)
            conn.callback_failed = True
            self._count("callback_errors")

    def _decode(self, conn: _Conn, datagram: bytes) -> None:
        try:
            header, payload = split_datagram(datagram)
            event = to_event(
                header, payload, connection=conn.number, container_id=conn.container_id
            )
        except DecodeError as e:
            self._log.debug("trace connection %d: unparseable datagram: %s", conn.number, e)
            self._count("unparseable")
            return
        self._account(conn, event)
        # A broken callback fails on every event: one traceback per connection.
        self._guarded(conn, f"{event.kind} event", self._on_event, event)

    def _account(self, conn: _Conn, event: TraceEvent) -> None:
        conn.container_id = conn.container_id or event.container_id
        # gVisor's count is cumulative per sink and wraps at 2**32; add the increase.
        new_drops = (event.dropped - conn.last_dropped) & 0xFFFF_FFFF
        conn.last_dropped = event.dropped
        with self._lock:
            self._stats["events"] += 1
            self._stats["dropped"] += new_drops
            self._stats["unknown_types"] += int(event.kind.startswith("message_"))

"""The observer's spool: one file of raw gVisor datagrams per sandbox connection.

Callers: ``farm.observe.daemon`` writes it (:class:`SpoolWriter` is the raw handler of
its ``TraceSink``); any farm process reads one container's record with
:func:`read_observation` once the sandbox is gone (``farm.runner`` through
``HostObserver``, later the Kubernetes node monitor). Nothing here knows Docker: a
container id is whatever runsc put in the trace context.

Layout of the spool directory, per runsc connection number N:

- ``conn-N.part``: datagrams of a connection whose container id is not known yet;
- ``<container>.N.part``: renamed when the first datagram names the container;
- ``<container>.N.meta`` then ``<container>.N.trace``: written at hang-up. The rename to
  ``.trace`` is the "complete" signal, so a reader never sees a half-written record.
- ``<container>.N.cut`` beside the ``.part``: the daemon itself cut the connection
  (it was stopped: a restart or rollout) while the sandbox was still running. The
  marker holds what ``.meta`` would; the ``.part`` keeps its name, so a reader that
  does not know the marker still never takes the record for complete (it waits for the
  hang-up, then reports the connection as still open). :func:`read_observation` returns
  such a record at once, with its events, as incomplete.

A record is ``u32 little-endian length`` + the datagram exactly as runsc sent it.
Decoding (and counting what does not decode) happens once, in the reader, as a
stream: a spool may hold :data:`MAX_SPOOL_BYTES`, far more than its decoded events
would take in memory (docs/observer.md, "Memory").
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from pydantic import ConfigDict, Field

from farm.observe.events import TraceEvent, in_time_order, to_event
from farm.observe.wire import DecodeError, split_datagram
from farm.records import TraceCompleteness

_LEN = struct.Struct("<I")
#: A container id becomes a file name, so it must be a plain name (Docker's are 64 hex).
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: One sandbox may spool this much; the rest is counted as overflow, never kept.
MAX_SPOOL_BYTES = 512 << 20
#: Records nobody collected (a farm process died mid-build) are pruned after this.
STALE_SECONDS = 6 * 3600
#: The daemon prunes this often (and at start).
PRUNE_EVERY = 600.0
#: Why a record whose connection the daemon cut is incomplete.
CUT_PROBLEM = (
    "the observer was stopped (restart or rollout) while this sandbox's trace connection "
    "was open: what gVisor saw after that is missing"
)


class Observation(TraceCompleteness):
    """What gVisor reported about one container, and how complete that record is.

    ``events`` holds a small record in memory (tests, fakes of the node monitor's
    source); a record read from the spool is streamed instead (:class:`SpooledRecord`),
    and its summary counts the events in ``streamed``.
    """

    model_config = ConfigDict(frozen=True)

    container_id: str
    events: list[TraceEvent] = Field(default_factory=list)
    connections: int = 0
    streamed: int = 0

    @property
    def count(self) -> int:
        """How many events the record held."""
        return len(self.events) + self.streamed

    def stream(self) -> Iterator[TraceEvent]:
        return in_time_order(self.events, window=len(self.events) + 1)

    def seen(self) -> Observation:
        return self


class TraceRecord(Protocol):
    """A container's record as the runner and the node monitor read it: the events
    once, in time order, then the completeness counts."""

    container_id: str

    def stream(self) -> Iterator[TraceEvent]: ...

    def seen(self) -> Observation: ...


@dataclass
class _Open:
    number: int
    path: Path
    file: BinaryIO
    container_id: str = ""
    datagrams: int = 0
    size: int = 0
    overflow: int = 0


class SpoolWriter:
    """``TraceSink`` raw handler: append each connection's datagrams to its own file.

    Each connection's thread touches only its own entry; the lock guards the table.
    """

    def __init__(
        self,
        directory: Path,
        logger: logging.Logger | None = None,
        *,
        max_bytes: int = MAX_SPOOL_BYTES,
    ) -> None:
        self.directory = directory
        self.logger = logger or logging.getLogger(__name__)
        self.max_bytes = max_bytes
        self._open: dict[int, _Open] = {}
        self._lock = threading.Lock()

    def datagram(self, connection: int, container_id: str, data: bytes) -> None:
        spool = self._spool(connection)
        if container_id and not spool.container_id:
            self._name(spool, container_id)
        if spool.size + len(data) > self.max_bytes:
            spool.overflow += 1
            return
        spool.file.write(_LEN.pack(len(data)) + data)
        spool.size += _LEN.size + len(data)
        spool.datagrams += 1

    def hangup(self, connection: int, container_id: str, finished: bool) -> None:
        """Close the connection's file: a record complete only if runsc ``finished`` it
        (``.trace``); one the daemon cut stays ``.part`` with a ``.cut`` marker."""
        with self._lock:
            spool = self._open.pop(connection, None)
        if spool is None:
            return  # a probe or a failed handshake: nothing was spooled
        spool.file.close()
        if not spool.container_id:
            self.logger.warning("trace connection %d never named its container", connection)
            return  # stays conn-N.part until pruned: nobody can ask for it
        stem = f"{spool.container_id}.{spool.number}"
        meta = json.dumps(
            {"datagrams": spool.datagrams, "bytes": spool.size, "overflow": spool.overflow}
        )
        if not finished:
            self.logger.warning("cut the trace connection of %s: its record is incomplete", stem)
            (self.directory / f"{stem}.cut").write_text(meta)
            return
        (self.directory / f"{stem}.meta").write_text(meta)
        spool.path.rename(self.directory / f"{stem}.trace")

    def prune(self, now: float | None = None) -> list[str]:
        """Remove records older than STALE_SECONDS; returns their names.

        Never the spool of a connection still open: its sandbox is alive, however long
        it runs, and its buffered file's mtime says nothing about that. Each open
        connection's file is known here; any other ``.part`` is a dead daemon's. (A
        connection opened or renamed after ``live`` is taken has a fresh file.)
        """
        cutoff = (now or time.time()) - STALE_SECONDS
        with self._lock:
            live = {spool.path.name for spool in self._open.values()}
        gone = []
        for path in self.directory.iterdir():
            if path.name in live or path.suffix not in (".trace", ".meta", ".part", ".cut"):
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    gone.append(path.name)
            except FileNotFoundError:
                continue  # collected meanwhile
        return gone

    def _spool(self, connection: int) -> _Open:
        spool = self._open.get(connection)  # only this connection's thread adds it
        if spool is None:
            path = self.directory / f"conn-{connection}.part"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            spool = _Open(connection, path, os.fdopen(fd, "wb", buffering=1 << 20))
            with self._lock:
                self._open[connection] = spool
        return spool

    def _name(self, spool: _Open, container_id: str) -> None:
        if not _SAFE_ID.match(container_id):
            self.logger.warning("container id %r is not a plain name", container_id)
            container_id = "invalid-id"
        path = self.directory / f"{container_id}.{spool.number}.part"
        spool.path.rename(path)  # the open file follows the rename
        spool.path, spool.container_id = path, container_id


def read_observation(
    directory: Path, container_id: str, *, timeout: float = 30.0, consume: bool = True
) -> SpooledRecord:
    """The record of ``container_id`` once all its connections hung up, to be read once
    as a stream (``stream()``, then ``seen()`` for its counts).

    Waits up to ``timeout`` seconds for runsc to hang up (it does when the sandbox is
    gone). A missing or unfinished record is returned with ``complete=False`` and the
    reason, never raised: the caller decides what an incomplete record means. So is one
    whose connection the daemon cut (a ``.cut`` marker), at once and with its events.
    With ``consume`` the files are removed once opened (the open files stay readable).
    """
    if not _SAFE_ID.match(container_id):
        return SpooledRecord(container_id, [], "invalid id", consume)
    deadline = time.monotonic() + timeout
    while True:
        traces = list(directory.glob(f"{container_id}.*.trace"))
        parts = list(directory.glob(f"{container_id}.*.part"))
        cut = [p for p in parts if p.with_suffix(".cut").exists()]
        pending = [p for p in parts if p not in cut]
        if (traces or cut) and not pending:
            problem = CUT_PROBLEM if cut else ""
            return SpooledRecord(container_id, sorted(traces + cut), problem, consume)
        if time.monotonic() >= deadline:
            problem = (
                f"gVisor's connection for this sandbox was still open after {timeout:.0f}s"
                if pending
                else "the observer received no trace connection for this sandbox"
            )
            return SpooledRecord(container_id, traces, problem, consume)
        time.sleep(0.1)


class SpooledRecord:
    """One container's record in the spool, decoded as a stream: memory stays bounded
    by :data:`farm.observe.events.REORDER_WINDOW`, however large the spool.

    Satisfies the same reading interface as :class:`Observation` (``stream()``,
    ``seen()``), which the runner and the node monitor use.
    """

    def __init__(self, container_id: str, traces: list[Path], problem: str, consume: bool):
        self.container_id = container_id
        self.problem = problem
        self._traces, self._consume = traces, consume
        self._counts = {"dropped": 0, "unparseable": 0, "overflow": 0, "unknown_types": 0}
        self._events = 0
        self._read = False

    def stream(self) -> Iterator[TraceEvent]:
        """Every event, in time order across connections; once (a second call raises
        RuntimeError, since the files are consumed)."""
        if self._read:
            raise RuntimeError(f"the record of {self.container_id} was already read")
        self._read = True
        files = []
        try:
            for number, trace in enumerate(self._traces, 1):
                files.append((number, self._open(trace)))
            streams = [
                in_time_order(self._decode(f, number)) for number, f in files if f is not None
            ]
            for event in heapq.merge(*streams, key=lambda e: e.context.time_ns):
                self._events += 1
                yield event
        finally:
            for _, f in files:
                if f is not None:
                    f.close()

    def whole(self) -> Observation:
        """The record with every event in memory: for small records only (tests)."""
        events = list(self.stream())
        return self.seen().model_copy(update={"events": events, "streamed": 0})

    def seen(self) -> Observation:
        """The record's completeness and event count (final once ``stream()`` ended)."""
        return Observation(
            container_id=self.container_id,
            connections=len(self._traces),
            streamed=self._events,
            complete=not self.problem,
            problem=self.problem,
            **self._counts,
        )

    def _open(self, trace: Path) -> BinaryIO | None:
        # A cut connection's counts are in its marker (see the module docstring).
        meta_path = trace.with_suffix(".cut" if trace.suffix == ".part" else ".meta")
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            f = trace.open("rb")
        except (OSError, ValueError):
            self._counts["unparseable"] += 1
            return None
        self._counts["overflow"] += int(meta.get("overflow", 0))
        if self._consume:  # the open file stays readable
            trace.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
        return f

    def _decode(self, f: BinaryIO, connection: int) -> Iterator[TraceEvent]:
        counts, last_dropped = self._counts, 0
        while header := f.read(_LEN.size):
            size = _LEN.unpack(header)[0] if len(header) == _LEN.size else -1
            datagram = f.read(size) if size >= 0 else b""
            if size < 0 or len(datagram) < size:
                counts["unparseable"] += 1  # a torn last record (the daemon died mid-write)
                return
            try:
                head, payload = split_datagram(datagram)
                event = to_event(
                    head, payload, connection=connection, container_id=self.container_id
                )
            except DecodeError:
                counts["unparseable"] += 1
                continue
            # gVisor's count is cumulative per connection and wraps at 2**32.
            counts["dropped"] += (event.dropped - last_dropped) & 0xFFFF_FFFF
            last_dropped = event.dropped
            counts["unknown_types"] += int(event.kind.startswith("message_"))
            yield event

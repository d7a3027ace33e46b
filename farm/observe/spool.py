"""The observer's spool: one file of raw gVisor datagrams per container.

Callers: ``farm.observe.daemon`` writes it (:class:`SpoolWriter` is the raw handler of
its ``TraceSink``); any farm process reads one container's record with
:func:`read_observation` once the sandbox is gone (``farm.runner`` through
``HostObserver``) and the Kubernetes node monitor (:func:`finished_record`). Nothing
here knows Docker: a container id is whatever runsc put in the trace context.

One runsc connection serves one sandbox, and a Kubernetes pod is one sandbox whose
pause, build and collector containers share it. So the spool keeps one record per
*container*, split by each event's own container id, and ends it when that container
is over (its init and every task of it the trace saw have exited; see
farm.observe.lifecycle), while the sandbox runs on. Layout, for runsc connection N:

- ``<container>.N.part``: the container's record while it runs;
- ``<container>.N.meta`` then ``<container>.N.trace``: written when the container is
  over, or at hang-up for the containers still running then. The rename to ``.trace``
  is the "complete" signal, so a reader never sees a half-written record;
- ``<container>.N-K.part``: events of a container whose record had already ended (a
  task the trace never saw start). Kept apart and marked ``late``: a reader that finds
  one reports the container's record incomplete;
- ``<container>.N.cut`` beside the ``.part``: the daemon itself cut the connection
  (it was stopped: a restart or rollout) while the container was still running. The
  marker holds what ``.meta`` would; the ``.part`` keeps its name, so a reader that
  does not know the marker still never takes the record for complete (it waits for the
  hang-up, then reports the connection as still open). :func:`read_observation` returns
  such a record at once, with its events, as incomplete.

gVisor's drop count is per connection: a drop is counted into every record open when
it is reported, since the lost event may have been any of theirs. A datagram naming no
container goes into every open record too, where the reader counts it.

A record is ``u32 little-endian length`` + the datagram exactly as runsc sent it.
Decoding (and counting what does not decode) happens once, in the reader, as a
stream: a spool may hold :data:`MAX_SPOOL_BYTES`, far more than its decoded events
would take in memory (docs/observer.md, "Memory").
"""

from __future__ import annotations

import dataclasses
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

from farm.observe.dirwatch import INTERVAL, DirWatch
from farm.observe.events import TraceEvent, in_time_order, to_event
from farm.observe.lifecycle import LiveTasks, container_of
from farm.observe.wire import DecodeError, split_datagram
from farm.records import TraceCompleteness

_LEN = struct.Struct("<I")
#: A container id becomes a file name, so it must be a plain name (Docker's are 64 hex).
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: One sandbox may spool this much; the rest is counted as overflow, never kept.
MAX_SPOOL_BYTES = 512 << 20
#: Container ids remembered per connection (a pod has a handful).
_MAX_NAMES = 256
#: Why a record with a late segment is incomplete.
LATE_PROBLEM = (
    "events of this container arrived after its record had ended (a task the trace "
    "never saw start): they are kept, but the record cannot vouch it saw them all in time"
)
#: Datagrams naming no container kept for a connection's first record (runsc's first
#: datagram names one: this only bounds a broken peer).
_MAX_ORPHANS = 64
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
class _Record:
    """One container's record, being written: ``<container>.<segment>.part``."""

    container_id: str
    segment: str
    path: Path
    file: BinaryIO
    tasks: LiveTasks = dataclasses.field(default_factory=LiveTasks)
    datagrams: int = 0
    overflow: int = 0
    #: gVisor's drops while this record was open: which container lost the event is
    #: unknown, so every record open at the time counts it.
    dropped: int = 0
    #: Events of a container whose record had already ended (see SpoolWriter).
    late: bool = False

    def meta(self) -> str:
        return json.dumps(
            {
                "datagrams": self.datagrams,
                "overflow": self.overflow,
                "dropped": self.dropped,
                "late": self.late,
            }
        )


@dataclass
class _Connection:
    """One runsc connection (one sandbox): its containers' records, split by each
    event's own container id."""

    number: int
    records: dict[str, _Record] = dataclasses.field(default_factory=dict)
    #: Containers whose records ended on this connection: a later event is "late".
    ended: set[str] = dataclasses.field(default_factory=set)
    #: Container ids as they arrive -> their file names (decoded and checked once).
    names: dict[bytes, str] = dataclasses.field(default_factory=dict)
    #: Datagrams naming no container before any record was open (bounded).
    orphans: list[bytes] = dataclasses.field(default_factory=list)
    last_dropped: int = 0
    size: int = 0
    segments: int = 0


class SpoolWriter:
    """``TraceSink`` raw handler: split each connection's datagrams by container id,
    one record file per container, and end a container's record as soon as the
    container is over (farm.observe.lifecycle), while its sandbox runs on.

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
        self._open: dict[int, _Connection] = {}
        self._lock = threading.Lock()

    def datagram(self, connection: int, container_id: str, data: bytes) -> None:
        """Spool one datagram under its own context's container id (the sink's
        ``container_id``, the connection's first, is not used: a pod has several)."""
        conn = self._connection(connection)
        try:
            header, payload = split_datagram(data)
        except DecodeError:
            self._unattributed(conn, data)
            return
        raw = container_of(payload)
        owner = conn.names.get(raw)
        if owner is None:
            owner = _safe_name(raw.decode("utf-8", "backslashreplace"), self.logger)
            if len(conn.names) < _MAX_NAMES:
                conn.names[raw] = owner
        if not owner:
            self._count_drops(conn, header.dropped)
            self._unattributed(conn, data)
            return
        record = conn.records.get(owner) or self._open_record(conn, owner)
        # After opening: a drop reported by a container's first datagram may have been
        # its own container/start.
        self._count_drops(conn, header.dropped)
        self._write(conn, record, data)
        if record.tasks.see(header, payload):
            self._end(conn, record, finished=True)
            conn.ended.add(owner)

    def hangup(self, connection: int, container_id: str, finished: bool) -> None:
        """End every record still open on the connection: complete only if runsc
        ``finished`` it (``.trace``); one the daemon cut stays ``.part`` with a
        ``.cut`` marker."""
        with self._lock:
            conn = self._open.pop(connection, None)
        if conn is None:
            return  # a probe or a failed handshake: nothing was spooled
        if not conn.records and not conn.ended:
            self.logger.warning("trace connection %d never named a container", connection)
        for record in list(conn.records.values()):
            self._end(conn, record, finished)

    def prune(self, now: float | None = None) -> list[str]:
        """Remove records older than STALE_SECONDS; returns their names.

        Never the spool of a connection still open: its sandbox is alive, however long
        it runs, and its buffered file's mtime says nothing about that. Each open
        record's file is known here; any other ``.part`` is a dead daemon's. (A
        record opened after ``live`` is taken has a fresh file.)
        """
        cutoff = (now or time.time()) - STALE_SECONDS
        with self._lock:
            live = {r.path.name for c in self._open.values() for r in c.records.values()}
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

    def _connection(self, number: int) -> _Connection:
        conn = self._open.get(number)  # only this connection's thread adds it
        if conn is None:
            conn = _Connection(number)
            with self._lock:
                self._open[number] = conn
        return conn

    def _open_record(self, conn: _Connection, container_id: str) -> _Record:
        conn.segments += 1
        late = container_id in conn.ended
        # The first record of a container on a connection is <id>.<connection>, as
        # before the split; a late one gets a segment of its own.
        segment = f"{conn.number}-{conn.segments}" if late else str(conn.number)
        path = self.directory / f"{container_id}.{segment}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        file = os.fdopen(fd, "wb", buffering=1 << 20)
        record = _Record(container_id, segment, path, file, late=late)
        if late:
            self.logger.warning(
                "events of %s arrived after its record ended: kept apart, as incomplete",
                container_id,
            )
        with self._lock:
            conn.records[container_id] = record
        for orphan in conn.orphans:  # what came before any container was named
            self._write(conn, record, orphan)
        conn.orphans.clear()
        return record

    def _write(self, conn: _Connection, record: _Record, data: bytes) -> None:
        if conn.size + _LEN.size + len(data) > self.max_bytes:
            record.overflow += 1
            return
        record.file.write(_LEN.pack(len(data)) + data)
        conn.size += _LEN.size + len(data)
        record.datagrams += 1

    def _unattributed(self, conn: _Connection, data: bytes) -> None:
        """A datagram that names no container (undecodable, or a type without a
        context) goes into every record open on the connection, whose reader counts
        it: unknown, so it may be anyone's. Before any record, it waits for the first."""
        if not conn.records:
            if len(conn.orphans) < _MAX_ORPHANS:
                conn.orphans.append(data)
            return
        for record in conn.records.values():
            self._write(conn, record, data)

    def _count_drops(self, conn: _Connection, dropped: int) -> None:
        # gVisor's count is cumulative per connection and wraps at 2**32.
        new = (dropped - conn.last_dropped) & 0xFFFF_FFFF
        conn.last_dropped = dropped
        for record in conn.records.values() if new else ():
            record.dropped += new

    def _end(self, conn: _Connection, record: _Record, finished: bool) -> None:
        with self._lock:
            del conn.records[record.container_id]
        record.file.close()
        stem = self.directory / f"{record.container_id}.{record.segment}"
        if not finished:
            self.logger.warning("cut the trace connection of %s: its record is incomplete", stem)
            Path(f"{stem}.cut").write_text(record.meta())
            return
        Path(f"{stem}.meta").write_text(record.meta())
        record.path.rename(f"{stem}.trace")


def _safe_name(container_id: str, logger: logging.Logger) -> str:
    """The container id as a file name ("" stays ""): a sandbox chose nothing here,
    but a runtime's id must still never name a path outside the spool."""
    if container_id and not _SAFE_ID.match(container_id):
        logger.warning("container id %r is not a plain name", container_id)
        return "invalid-id"
    return container_id


def read_observation(
    directory: Path,
    container_id: str,
    *,
    timeout: float = 30.0,
    consume: bool = True,
    interval: float = INTERVAL,
) -> SpooledRecord:
    """The record of ``container_id`` once all its connections hung up, to be read once
    as a stream (``stream()``, then ``seen()`` for its counts).

    Waits up to ``timeout`` seconds for runsc to hang up (it does when the sandbox is
    gone). A missing or unfinished record is returned with ``complete=False`` and the
    reason, never raised: the caller decides what an incomplete record means. So is one
    whose connection the daemon cut (a ``.cut`` marker), at once and with its events.
    With ``consume`` the files are removed once opened (the open files stay readable).
    The wait ends when the daemon writes the record (farm.observe.dirwatch), looking
    again at least every ``interval`` seconds.
    """
    if not _SAFE_ID.match(container_id):
        return SpooledRecord(container_id, [], "invalid id", consume)
    deadline = time.monotonic() + timeout
    # Most often the daemon is done by now: a watch (whose close costs the kernel some
    # milliseconds) only when it is not.
    record = finished_record(directory, container_id, consume=consume)
    if record is not None or timeout <= 0:
        return record or _unfinished(directory, container_id, timeout, consume)
    with DirWatch(directory, interval) as watch:  # before the next look: no change missed
        while True:
            record = finished_record(directory, container_id, consume=consume)
            if record is not None:
                return record
            if time.monotonic() >= deadline:
                return _unfinished(directory, container_id, timeout, consume)
            watch.wait(deadline - time.monotonic())


def _unfinished(directory: Path, container_id: str, timeout: float, consume: bool) -> SpooledRecord:
    """What is there of a record that did not finish in ``timeout`` seconds."""
    pending = list(directory.glob(f"{container_id}.*.part"))
    traces = list(directory.glob(f"{container_id}.*.trace"))
    problem = (
        f"gVisor's record of this container was still open after {timeout:.0f}s"
        if pending
        else "the observer received no trace connection for this container"
    )
    return SpooledRecord(container_id, traces, problem, consume)


def finished_record(
    directory: Path, container_id: str, *, consume: bool = True
) -> SpooledRecord | None:
    """The record of ``container_id`` if it has ended (complete, or cut by a stopped
    daemon); None while any part of it is still being written or nothing arrived yet.
    Never waits: the node monitor asks again on its next scan."""
    if not _SAFE_ID.match(container_id):
        return SpooledRecord(container_id, [], "invalid id", consume)
    # Parts before traces: a part renamed to .trace between the two globs is then
    # still in one list (the other order lost it, and a record looked complete).
    parts = list(directory.glob(f"{container_id}.*.part"))
    traces = list(directory.glob(f"{container_id}.*.trace"))
    cut = [p for p in parts if p.with_suffix(".cut").exists()]
    if not (traces or cut) or len(cut) < len(parts):
        return None
    if set(directory.glob(f"{container_id}.*.part")) - set(parts):
        return None  # a new segment began meanwhile: not finished
    return SpooledRecord(container_id, sorted(traces + cut), CUT_PROBLEM if cut else "", consume)


def _is_late(path: Path) -> bool:
    """A late segment is ``<container>.N-K.<suffix>`` (see the module docstring)."""
    return "-" in path.stem.rsplit(".", 1)[-1]


class SpooledRecord:
    """One container's record in the spool, decoded as a stream: memory stays bounded
    by :data:`farm.observe.events.REORDER_WINDOW`, however large the spool.

    Satisfies the same reading interface as :class:`Observation` (``stream()``,
    ``seen()``), which the runner and the node monitor use.
    """

    def __init__(self, container_id: str, traces: list[Path], problem: str, consume: bool):
        self.container_id = container_id
        late = LATE_PROBLEM if any(_is_late(trace) for trace in traces) else ""
        self.problem = "; ".join(p for p in (problem, late) if p)
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
                files.append((number, *self._open(trace)))
            streams = [
                in_time_order(self._decode(f, number, drops))
                for number, f, drops in files
                if f is not None
            ]
            for event in heapq.merge(*streams, key=lambda e: e.context.time_ns):
                self._events += 1
                yield event
        finally:
            for _, f, _ in files:
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

    def _open(self, trace: Path) -> tuple[BinaryIO | None, bool]:
        """The open file, and whether its drops must be counted from the datagram
        headers (a spool written before records were split by container)."""
        # A cut connection's counts are in its marker (see the module docstring).
        meta_path = trace.with_suffix(".cut" if trace.suffix == ".part" else ".meta")
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            f = trace.open("rb")
        except (OSError, ValueError):
            self._counts["unparseable"] += 1
            return None, False
        self._counts["overflow"] += int(meta.get("overflow", 0))
        self._counts["dropped"] += int(meta.get("dropped", 0))
        if self._consume:  # the open file stays readable
            trace.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
        return f, "dropped" not in meta

    def _decode(self, f: BinaryIO, connection: int, header_drops: bool) -> Iterator[TraceEvent]:
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
            if header_drops:  # cumulative per connection, wrapping at 2**32
                counts["dropped"] += (event.dropped - last_dropped) & 0xFFFF_FFFF
                last_dropped = event.dropped
            counts["unknown_types"] += int(event.kind.startswith("message_"))
            yield event

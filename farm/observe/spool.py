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

A record is ``u32 little-endian length`` + the datagram exactly as runsc sent it.
Decoding (and counting what does not decode) happens once, in the reader.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import ConfigDict, Field

from farm.observe.events import TraceEvent, to_event
from farm.observe.wire import DecodeError, split_datagram
from farm.records import TraceCompleteness

_LEN = struct.Struct("<I")
#: A container id becomes a file name, so it must be a plain name (Docker's are 64 hex).
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: One sandbox may spool this much; the rest is counted as overflow, never kept.
MAX_SPOOL_BYTES = 512 << 20
#: Records nobody collected (a farm process died mid-build) are pruned after this.
STALE_SECONDS = 6 * 3600


class Observation(TraceCompleteness):
    """What gVisor reported about one container, and how complete that record is."""

    model_config = ConfigDict(frozen=True)

    container_id: str
    events: list[TraceEvent] = Field(default_factory=list)
    connections: int = 0


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

    def hangup(self, connection: int, container_id: str) -> None:
        with self._lock:
            spool = self._open.pop(connection, None)
        if spool is None:
            return  # a probe or a failed handshake: nothing was spooled
        spool.file.close()
        if not spool.container_id:
            self.logger.warning("trace connection %d never named its container", connection)
            return  # stays conn-N.part until pruned: nobody can ask for it
        stem = f"{spool.container_id}.{spool.number}"
        meta = {"datagrams": spool.datagrams, "bytes": spool.size, "overflow": spool.overflow}
        (self.directory / f"{stem}.meta").write_text(json.dumps(meta))
        spool.path.rename(self.directory / f"{stem}.trace")

    def prune(self, now: float | None = None) -> list[str]:
        """Remove records older than STALE_SECONDS; returns their names."""
        cutoff = (now or time.time()) - STALE_SECONDS
        gone = []
        for path in self.directory.iterdir():
            try:
                if path.stat().st_mtime < cutoff and path.suffix in (".trace", ".meta", ".part"):
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
) -> Observation:
    """The record of ``container_id`` once all its connections hung up.

    Waits up to ``timeout`` seconds for runsc to hang up (it does when the sandbox is
    gone). A missing or unfinished record is returned with ``complete=False`` and the
    reason, never raised: the caller decides what an incomplete record means.
    With ``consume`` the files are removed after reading.
    """
    if not _SAFE_ID.match(container_id):
        return Observation(container_id=container_id, complete=False, problem="invalid id")
    deadline = time.monotonic() + timeout
    while True:
        traces = sorted(directory.glob(f"{container_id}.*.trace"))
        pending = list(directory.glob(f"{container_id}.*.part"))
        if traces and not pending:
            break
        if time.monotonic() >= deadline:
            problem = (
                f"gVisor's connection for this sandbox was still open after {timeout:.0f}s"
                if pending
                else "the observer received no trace connection for this sandbox"
            )
            return _read(traces, container_id, consume, problem)
        time.sleep(0.1)
    return _read(traces, container_id, consume, "")


def _read(traces: list[Path], container_id: str, consume: bool, problem: str) -> Observation:
    events: list[TraceEvent] = []
    counts = {"dropped": 0, "unparseable": 0, "overflow": 0, "unknown_types": 0}
    for number, trace in enumerate(traces, 1):
        meta_path = trace.with_suffix(".meta")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        counts["overflow"] += int(meta.get("overflow", 0))
        _decode_file(trace.read_bytes(), number, container_id, events, counts)
        if consume:
            trace.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
    return Observation(
        container_id=container_id,
        events=events,
        connections=len(traces),
        complete=not problem,
        problem=problem,
        **counts,
    )


def _decode_file(
    data: bytes, connection: int, container_id: str, events: list[TraceEvent], counts: dict
) -> None:
    pos, last_dropped = 0, 0
    while pos + _LEN.size <= len(data):
        (size,) = _LEN.unpack_from(data, pos)
        datagram = data[pos + _LEN.size : pos + _LEN.size + size]
        pos += _LEN.size + size
        try:
            header, payload = split_datagram(datagram)
            event = to_event(header, payload, connection=connection, container_id=container_id)
        except DecodeError:
            counts["unparseable"] += 1
            continue
        # gVisor's count is cumulative per connection and wraps at 2**32.
        counts["dropped"] += (event.dropped - last_dropped) & 0xFFFF_FFFF
        last_dropped = event.dropped
        counts["unknown_types"] += int(event.kind.startswith("message_"))
        events.append(event)
    if pos != len(data):
        counts["unparseable"] += 1  # a torn last record (the daemon died mid-write)

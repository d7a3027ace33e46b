"""One host-wide observer session for the local backend's ``runsc-observed`` runtime.

Callers: ``farm.cli`` opens it around an observed build and ``farm.runner`` asks it for
the events of the build's container. Docker 20.10 cannot pass a per-container
``--pod-init-config``, so the runtime points at one fixed socket; a lock file makes sure
only one farm process serves it at a time (fail-closed: with no sink listening, runsc
refuses to start the sandbox).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

from farm.errors import InfrastructureError
from farm.observe.events import TraceEvent
from farm.observe.sink import TraceSink

OBSERVER_DIR = Path("/run/farm")
OBSERVER_SOCKET = OBSERVER_DIR / "observer.sock"
#: Past this many events one build's record would grow without bound; the rest is counted.
MAX_EVENTS = 200_000


class ObserverSession:
    def __init__(self, socket_path: Path = OBSERVER_SOCKET) -> None:
        self.socket_path = socket_path
        self._lock_file: int | None = None
        self._sink: TraceSink | None = None
        self._events: list[TraceEvent] = []
        self._overflow = 0
        self._guard = threading.Lock()

    def __enter__(self) -> ObserverSession:
        """Raises InfrastructureError if another farm process is observing."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.socket_path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InfrastructureError(
                "another observed build is running on this host; wait, or build without --observe"
            ) from None
        self._lock_file = fd
        self.socket_path.unlink(missing_ok=True)  # stale, and ours: we hold the lock
        self._sink = TraceSink(self.socket_path, self._on_event).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sink:
            self._sink.close()
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock

    def _on_event(self, event: TraceEvent) -> None:
        with self._guard:
            if len(self._events) < MAX_EVENTS:
                self._events.append(event)
            else:
                self._overflow += 1

    def events(self, container_id: str, settle_seconds: float = 10.0) -> list[TraceEvent]:
        """The container's events, once runsc has hung up (the sandbox is gone)."""
        assert self._sink is not None, "use ObserverSession as a context manager"
        self._sink.wait_idle(settle_seconds)
        with self._guard:
            return [e for e in self._events if e.container_id == container_id]

    def lost(self) -> int:
        """Events received but not kept: undecodable datagrams plus those past MAX_EVENTS."""
        assert self._sink is not None, "use ObserverSession as a context manager"
        return self._sink.stats().unparseable + self._overflow

"""The host observer: one daemon per host serves gVisor's trace socket for every sandbox.

Callers: ``farm observer`` runs :class:`ObserverDaemon` in the foreground; any farm
process (the CLI, ``farm serve`` with its worker threads, the Kubernetes node monitor)
uses :class:`HostObserver`, which starts the daemon on demand and reads one
container's record from the spool once that container is over (``collect`` waits for
it, ``poll`` does not). A long-running service
may instead run ``ObserverDaemon`` in-process and still hand ``HostObserver`` to its
workers: they meet only through the files under :class:`ObserverPaths`.

Exactly one daemon serves a host: it holds an exclusive ``flock`` on ``lock`` for its
whole life (a second one exits), and writes its pid to ``pid``. Fail-closed is kept:
runsc's ``runsc-observed`` runtime refuses to create a sandbox if nobody listens on
``socket``, so a build never runs unobserved when observation was asked for.
Nothing here knows Docker: sandboxes are told apart by the container id gVisor puts in
each event.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from farm.errors import InfrastructureError
from farm.observe.sink import TraceSink
from farm.observe.spool import (
    PRUNE_EVERY,
    SpooledRecord,
    SpoolWriter,
    finished_record,
    read_observation,
)

RUN_DIR = Path("/run/farm")
#: Fixed, because dockerd passes runsc's --pod-init-config per runtime, not per build.
OBSERVER_SOCKET = RUN_DIR / "observer.sock"
SPOOL_DIR = Path("/var/lib/farm/observer")


@dataclass(frozen=True)
class ObserverPaths:
    """Where the daemon listens, locks, and spools. Tests use a private set."""

    socket: Path = OBSERVER_SOCKET
    spool: Path = SPOOL_DIR

    @property
    def lock(self) -> Path:
        return self.socket.with_suffix(".lock")

    @property
    def pid(self) -> Path:
        return self.socket.with_suffix(".pid")

    @property
    def log(self) -> Path:
        return self.spool / "observer.log"


class ObserverBusy(InfrastructureError):
    """Another observer daemon already serves these paths."""


class ObserverDaemon:
    """Serve ``paths.socket`` and spool every connection (see farm.observe.spool).

    While it serves, it prunes uncollected records every ``prune_every`` seconds (and at
    start), whoever runs it: ``farm observer`` or the node monitor, which may run for
    months without a restart. Stopping it cuts the connections still open, and their
    records are marked incomplete (``SpoolWriter.hangup``), never complete.
    """

    def __init__(
        self,
        paths: ObserverPaths,
        *,
        logger: logging.Logger | None = None,
        prune_every: float = PRUNE_EVERY,
    ) -> None:
        self.paths = paths
        self.prune_every = prune_every
        self._log = logger or logging.getLogger(__name__)
        self._lock_fd: int | None = None
        self._sink: TraceSink | None = None
        self._writer = SpoolWriter(paths.spool, self._log)
        self._stopping = threading.Event()
        self._pruner: threading.Thread | None = None

    def start(self) -> ObserverDaemon:
        """Raises ObserverBusy if a daemon runs, InfrastructureError if it cannot listen."""
        self.paths.socket.parent.mkdir(parents=True, exist_ok=True)
        self.paths.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ObserverBusy(f"an observer daemon already serves {self.paths.socket}") from None
        self._lock_fd = fd
        try:
            self.paths.socket.unlink(missing_ok=True)  # stale, and ours: we hold the lock
            self.prune()
            self._sink = TraceSink(self.paths.socket, raw=self._writer, logger=self._log).start()
            self._stopping.clear()
            self._pruner = threading.Thread(
                target=self._prune_loop, name="spool-prune", daemon=True
            )
            self._pruner.start()
        except BaseException:
            self.close()
            raise
        self.paths.pid.write_text(f"{os.getpid()}\n")
        self._log.info("observer serving %s, spooling to %s", self.paths.socket, self.paths.spool)
        return self

    def prune(self) -> list[str]:
        """Remove the records nobody collected in time (``SpoolWriter.prune``)."""
        gone = self._writer.prune()
        for name in gone:
            self._log.info("pruned uncollected trace record %s", name)
        return gone

    def _prune_loop(self) -> None:
        while not self._stopping.wait(self.prune_every):
            try:
                self.prune()
            except OSError as exc:  # the next round tries again
                self._log.warning("pruning the spool failed: %s", exc)

    def close(self) -> None:
        """Stop serving: runsc then refuses new observed sandboxes (fail-closed), and
        the records of connections cut here are incomplete."""
        self._stopping.set()
        if self._pruner is not None:
            self._pruner.join()
            self._pruner = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._lock_fd is not None:
            self.paths.pid.unlink(missing_ok=True)
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> ObserverDaemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT (``farm observer``)."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        with self:
            while not stop.wait(1.0):  # a timeout, so the signal handler gets to run
                pass


def daemon_running(paths: ObserverPaths) -> bool:
    """True if some process holds the daemon's lock and its socket exists."""
    try:
        fd = os.open(paths.lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return paths.socket.exists()
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class HostObserver:
    """The runner's ``Observer``: one per process, safe to share between threads.

    ``ready()`` before a sandbox is created (starts the daemon if none runs);
    ``collect(container_id)`` after it is gone.
    """

    def __init__(self, paths: ObserverPaths | None = None, *, collect_timeout: float = 30.0):
        self.paths = paths or ObserverPaths()
        self.collect_timeout = collect_timeout
        self._starting = threading.Lock()

    def ready(self) -> None:
        """Raises InfrastructureError if no daemon runs and none could be started."""
        with self._starting:  # one spawn per process, however many workers ask
            if daemon_running(self.paths):
                return
            self._spawn()

    def collect(self, container_id: str, timeout: float | None = None) -> SpooledRecord:
        """The container's record, to be read once as a stream (see SpooledRecord)."""
        wait = self.collect_timeout if timeout is None else timeout
        return read_observation(self.paths.spool, container_id, timeout=wait)

    def poll(self, container_id: str) -> SpooledRecord | None:
        """The container's record if it has ended (its container is over, or its
        sandbox gone), else None at once (the node monitor asks on every scan)."""
        return finished_record(self.paths.spool, container_id)

    def _spawn(self, timeout: float = 20.0) -> None:
        self.paths.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [sys.executable, "-m", "farm.cli", "observer", "--detach"]
        argv += ["--socket", str(self.paths.socket), "--spool", str(self.paths.spool)]
        with self.paths.log.open("ab") as log:
            # --detach returns once the daemon (its own session) holds the lock.
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", timeout=timeout
            )
        if done.returncode != 0 or not daemon_running(self.paths):
            raise InfrastructureError(
                f"the observer daemon did not start (exit {done.returncode}); "
                f"see {self.paths.log}, or run `farm observer` yourself"
            )


def detach(paths: ObserverPaths, timeout: float = 15.0) -> int:
    """Fork a daemon into its own session; return 0 once it serves (``farm observer
    --detach``), 0 too if another daemon won the race, else 4."""
    pid = os.fork()
    if pid == 0:  # the daemon: a new session, so no terminal or process group kills it
        os.setsid()
        code = 0
        try:
            ObserverDaemon(paths).serve_forever()
        except ObserverBusy:
            pass
        except BaseException:
            logging.getLogger(__name__).exception("observer daemon failed")
            code = 4
        os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_running(paths):
            return 0
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            return 0 if status == 0 and daemon_running(paths) else 4
        time.sleep(0.05)
    return 4

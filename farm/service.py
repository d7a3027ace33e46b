"""The build service behind ``farm serve``: a bounded pool of worker threads that take
builds from the durable queue and run each with a ``farm.runner.Runner``.

Callers: ``farm.cli`` (``farm serve`` creates one Service, starts it, stops it on
SIGTERM/SIGINT) and ``farm.api`` (submits builds, reads gauges at scrape time). Each
worker owns its Runner and backend (docker-py clients are not shared across threads);
the Store opens one SQLite connection per call, so it is safe to share.

Crash recovery happens in :meth:`Service.start`, before any worker runs: builds whose
service died mid-run are marked ``lost`` and their sandboxes reaped; builds it had
claimed but not started go back to the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from farm.admission import Admission
from farm.buildflow import OPTIONS_KEY, BuildOptions, run_build, take_options
from farm.confine import SourcePolicy
from farm.errors import ExitCode, FarmError, InputError, NotFoundError
from farm.logs import CappedLog
from farm.metrics import BEHAVIOUR_SEVERITIES, Metrics
from farm.queue import Entry, Queue, State
from farm.readslots import ReadSlots
from farm.records import BuildRecord, Status
from farm.runner import Runner, resolve
from farm.sandbox import Backend
from farm.spec import BuildSpec, build_spec
from farm.store import Store

log = logging.getLogger("farm.serve")

#: Who changes what a refused spec ran into.
SERVE_HINT = (
    "this service's operator sets the ceilings with `farm serve --ceiling NAME=VALUE` and "
    "the images with `--allow-image PATTERN` (docs/serve.md)"
)


class CancelledError(FarmError):
    """Raised in a worker, before its sandbox starts, for a build a client cancelled."""

    exit_code = ExitCode.BUILD_FAILED


#: Submitted trees read at once (``Service.admit``), of those at most ``TENANT_READ_SLOTS``
#: for one tenant, and how long one more waits.
READ_SLOTS = 2
TENANT_READ_SLOTS = 1
READ_WAIT_SECONDS = 10.0

#: What a build torn down by ``Service.stop`` ends as; any other result is real and kept.
_CUT_SHORT = (Status.ERROR, Status.FAILED, Status.CANCELLED)

#: Given a worker's phase callback, make the Runner that worker uses.
RunnerFactory = Callable[[Callable[[str, CappedLog | None], None]], Runner]


@dataclass
class _Worker:
    runner: Runner | None = None
    phase: str = "idle"
    build_id: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class Service:
    def __init__(
        self,
        *,
        queue: Queue,
        store: Store,
        backend: Backend,
        runner_factory: RunnerFactory,
        metrics: Metrics,
        sources: SourcePolicy,
        concurrency: int,
        admission: Admission | None = None,
        resolve_mirror: Path | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.backend = backend
        self.runner_factory = runner_factory
        self.metrics = metrics
        self.sources = sources
        #: The operator's ceilings and images (farm.admission); default: their defaults.
        self.admission = admission if admission is not None else Admission()
        #: The operator's farm mirror (``--resolve-mirror``) a build asking for
        #: ``resolve_lock`` is resolved against; None: such a build is refused.
        self.resolve_mirror = resolve_mirror
        self._workers = [_Worker() for _ in range(concurrency)]
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._tenants: set[str] = set()  # every tenant seen, so its gauge can go to 0
        self._tenants_lock = threading.Lock()  # HTTP threads submit and scrape at once
        # Reading a submitted tree (git history, Cargo.toml) costs CPU a tenant chooses,
        # within farm.gitread's caps; so few run at once, whatever the HTTP threads.
        self._reading = ReadSlots(READ_SLOTS, TENANT_READ_SLOTS)
        self._cancelled: set[str] = set()  # by stop(): requeue
        self._cancel_asked: set[str] = set()  # by a client: end as cancelled

    # lifecycle

    def start(self) -> list[str]:
        """Recover from a previous crash, then start the workers. Returns what recovery did."""
        said = self.recover()
        for index, worker in enumerate(self._workers):
            worker.runner = self.runner_factory(self._phase_setter(worker))
            worker.thread = threading.Thread(
                target=self._work, args=(worker,), name=f"farm-worker-{index}", daemon=True
            )
            worker.thread.start()
        return said

    def recover(self) -> list[str]:
        """Only call while no worker of this service runs (the serve lock guarantees no
        other service does): every ``running`` queue entry is then an orphan."""
        reaper = self.runner_factory(lambda phase, log: None)
        said = []
        for reaped in reaper.reap():
            said.append(reaped.message)
            if reaped.removed:
                self.metrics.reaped.inc()
            if reaped.tenant:
                self.metrics.builds.labels(reaped.tenant, Status.LOST.value).inc()
        for entry in self.queue.entries(state=State.RUNNING, limit=1 << 30):
            record = self._record(entry.id)
            if record is None:  # claimed, but no sandbox was ever made: run it again
                self.queue.requeue(entry.id)
                said.append(f"requeued build {entry.id}: the service stopped before it ran")
                continue
            if record.status is Status.RUNNING:  # its owner pid was reused by another process
                said.append(self._mark_lost(record))
            self.queue.finish(entry.id, record.status.value, int(record.status.exit_code))
        return said

    def stop(self, timeout: float = 120) -> None:
        """Stop taking builds and cancel running ones; they are requeued and run again
        after a restart. Sandboxes are torn down here, not left to a later reap."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        # Repeat: a worker may be between preflight and creating its sandbox right now.
        while any(w.thread and w.thread.is_alive() for w in self._workers):
            running = {w.build_id for w in self._workers if w.build_id}
            self._cancelled |= running
            for sandbox_id, build_id in self.backend.list_sandboxes().items():
                if build_id in running:
                    self.backend.teardown(sandbox_id)
            for worker in self._workers:
                if worker.thread:
                    worker.thread.join(0.5)
            if time.monotonic() > deadline:
                log.warning("workers still busy after %.0f s; the next start reaps", timeout)
                break

    def alive(self) -> bool:
        return all(w.thread and w.thread.is_alive() for w in self._workers)

    # submission

    def admit(self, data: dict[str, object], options: BuildOptions) -> BuildSpec:
        """A submitted spec, checked against the operator's ceilings and images and its
        source confined before anything reads it, then resolved (cargo defaults,
        SOURCE_DATE_EPOCH). Raises NotAdmittedError (a SpecError) naming every field above
        its ceiling and an image the operator does not allow, SpecError or InputError; a
        source outside gets the same answer whether or not it exists; BusyError when
        ``READ_SLOTS`` submissions, or ``TENANT_READ_SLOTS`` of this tenant's, are being
        read for ``READ_WAIT_SECONDS``."""
        spec = build_spec(data, service=True)
        self.check(spec, options)
        with self._reading.hold(spec.tenant, READ_WAIT_SECONDS):
            return resolve(spec, within=self.sources.allowed(spec.tenant))

    def check(self, spec: BuildSpec, options: BuildOptions) -> None:
        """The operator's admission, then the source's confinement; raises as ``admit``."""
        self.admission.enforce(spec, SERVE_HINT, options.check)
        if options.resolve_lock and self.resolve_mirror is None:
            raise InputError(
                "resolve_lock: this farm serve has no mirror to resolve locks against (its "
                "operator starts it with --resolve-mirror DIR); submit the tree with its "
                "Cargo.lock instead"
            )
        self.sources.check(spec)

    def submit(self, build_id: str, spec: BuildSpec, options: BuildOptions | None = None) -> Entry:
        """Raises NotAdmittedError for a spec the operator does not allow, InputError if
        the source is outside the allowed directory."""
        options = options or BuildOptions()
        self.check(spec, options)
        stored = {**spec.model_dump(mode="json"), OPTIONS_KEY: options.model_dump()}
        entry = self.queue.submit(build_id, spec.tenant, stored)
        with self._tenants_lock:
            self._tenants.add(spec.tenant)
        with self._wake:
            self._wake.notify_all()
        return entry

    def cancel(self, entry: Entry, timeout: float = 60) -> None:
        """Cancel a queued build, or tear down a running one's sandbox (repeatedly, as a
        worker may be about to create it); returns once the build is done, or after
        ``timeout`` (a worker still snapshotting a large tree) with the build marked."""
        cancelled = Status.CANCELLED
        if self.queue.cancel_queued(entry.id, int(cancelled.exit_code)):
            self.metrics.builds.labels(entry.tenant, cancelled.value).inc()
            return
        self._cancel_asked.add(entry.id)
        deadline = time.monotonic() + timeout
        while self.queue.get(entry.id).state is State.RUNNING and time.monotonic() < deadline:
            for sandbox_id, build_id in self.backend.list_sandboxes().items():
                if build_id == entry.id:
                    self.backend.teardown(sandbox_id)
            time.sleep(0.2)

    # metrics computed at scrape time

    def refresh_gauges(self) -> None:
        depth = self.queue.depth()
        with self._tenants_lock:
            self._tenants |= depth.keys()
            tenants = sorted(self._tenants)
        for tenant in tenants:
            self.metrics.queued.labels(tenant).set(depth.get(tenant, 0))
        self.metrics.sandboxes_active.set(sum(w.phase == "build" for w in self._workers))
        try:
            self.metrics.sandboxes_leaked.set(len(self.leaked_sandboxes()))
        except FarmError as exc:  # dockerd down: keep the last value, still serve the rest
            log.warning("could not count leaked sandboxes: %s", exc)

    def leaked_sandboxes(self) -> list[str]:
        """This home's sandboxes whose build is over (its record final, or no record):
        the runner tears a sandbox down before it saves the final record, so one still
        listed after that record was read has outlived its build."""
        over = {
            sandbox_id
            for sandbox_id, build_id in self.backend.list_sandboxes().items()
            if (record := self._record(build_id)) is None or record.status is not Status.RUNNING
        }
        # Listed again: a build whose teardown ended between the listing and the read.
        return sorted(over & self.backend.list_sandboxes().keys()) if over else []

    # workers

    def _phase_setter(self, worker: _Worker) -> Callable[[str, CappedLog | None], None]:
        def set_phase(phase: str, log: CappedLog | None) -> None:
            worker.phase = phase
            if phase == "build" and worker.build_id in self._cancel_asked:
                raise CancelledError("cancelled by a client before its sandbox started")

        return set_phase

    def _work(self, worker: _Worker) -> None:
        while not self._stopping.is_set():
            entry = self.queue.claim()
            if entry is None:
                with self._wake:
                    self._wake.wait(timeout=0.5)
                continue
            worker.build_id = entry.id
            if self._stopping.is_set():  # claimed while stop() ran: leave it for next time
                self.queue.requeue(entry.id)
                break
            try:
                self._run(worker, entry)
            except Exception:  # a bug must not shrink the pool; the build is marked
                log.exception("worker failed on build %s", entry.id)
                self.queue.finish(entry.id, Status.ERROR.value, int(ExitCode.INFRASTRUCTURE))
            finally:
                worker.build_id, worker.phase = None, "idle"
                with self._wake:
                    self._wake.notify_all()

    def _run(self, worker: _Worker, entry: Entry) -> None:
        assert worker.runner is not None and entry.started_at is not None
        self.metrics.queue_wait.labels(entry.tenant).observe(entry.started_at - entry.submitted_at)
        error: FarmError | None = None
        try:
            data = dict(entry.spec)
            options = take_options(data)
            spec = build_spec(data, service=True)
            # Again: the operator may have lowered a ceiling, the tree may have moved.
            self.check(spec, options)
            runner = worker.runner
            if options.resolve_lock:
                assert self.resolve_mirror is not None  # check() refused it otherwise
                runner = runner.resolving(self.resolve_mirror)
            run_build(
                runner,
                spec,
                build_id=entry.id,
                check_runs=options.check,
                # A resolved lock depends on the mirror, which the cache key does not name.
                use_cache=not (options.no_cache or options.resolve_lock),
                metrics=self.metrics,
            )
        except FarmError as exc:
            error = exc
        record = self._record(entry.id)
        if entry.id in self._cancelled and (record is None or record.status in _CUT_SHORT):
            self._requeue(entry.id, record)
            return
        if entry.id in self._cancel_asked and record and record.status in _CUT_SHORT:
            record.status = Status.CANCELLED
            record.notes.append("cancelled by a client; the sandbox was torn down")
            self.store.save(record)
        if record is None:  # refused before a sandbox existed (bad image, no runtime…)
            assert error is not None
            result = Status.FAILED if error.exit_code == ExitCode.BAD_INPUT else Status.ERROR
            self.queue.finish(entry.id, result.value, int(error.exit_code), str(error))
            self.metrics.builds.labels(entry.tenant, result.value).inc()
            return
        self.queue.finish(
            entry.id, record.status.value, int(record.status.exit_code), error and str(error)
        )
        self._count(record)

    def _count(self, record: BuildRecord) -> None:
        m = self.metrics
        m.builds.labels(record.tenant, record.status.value).inc()
        if record.duration_seconds is not None:
            m.build_duration.labels(record.tenant).observe(record.duration_seconds)
        if record.teardown_seconds is not None:
            m.teardown.observe(record.teardown_seconds)
        # An action the spec's allow rules permit (a -sys crate running cc) is not blocked.
        kinds = Counter(str(a["kind"]) for a in record.blocked_actions if not a.get("allowed"))
        if record.observation and record.observation.refused_by_kind:
            kinds = Counter(record.observation.refused_by_kind)  # listed or not
        for kind, n in kinds.items():
            m.blocked_actions.labels(record.tenant, kind).inc(n)
        if record.observation:
            m.observer_dropped.inc(record.observation.lost)
        if record.observation:
            # Every severity's series exists from the tenant's first observed build, at
            # 0: increase() in the alert and the panel then sees the first change.
            for severity in BEHAVIOUR_SEVERITIES:
                m.behaviour_changes.labels(record.tenant, severity)
        for change in record.behaviour_changes:
            m.behaviour_changes.labels(record.tenant, change.severity).inc()

    def _requeue(self, build_id: str, record: BuildRecord | None) -> None:
        if record is not None:
            record.status = Status.CANCELLED
            record.notes.append("cancelled when farm serve stopped; queued to run again")
            self.store.save(record)
        self.queue.requeue(build_id)

    def _mark_lost(self, record: BuildRecord) -> str:
        removed = self.backend.teardown(record.container_id) if record.container_id else []
        record.status, record.teardown = Status.LOST, removed
        record.notes.append("farm serve exited during this build; its sandbox was reaped")
        self.store.save(record)
        if removed:
            self.metrics.reaped.inc()
        self.metrics.builds.labels(record.tenant, Status.LOST.value).inc()
        return f"reaped build {record.id} left by a crashed service ({', '.join(removed)})"

    def _record(self, build_id: str) -> BuildRecord | None:
        try:
            record = self.store.get(build_id)
        except NotFoundError:
            return None
        return record if record.id == build_id else None

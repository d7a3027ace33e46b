"""Run one build end to end: resolve, preflight, snapshot, sandbox, collect, record.

Callers: ``farm.cli`` and ``farm.service`` (one Runner per worker thread). The runner
only knows the ``Backend`` protocol, so it is the same for every backend. Every path
out of ``build`` (success, failure, deadline, OOM, SIGINT/SIGTERM, infrastructure
error) tears the sandbox down, unmounts the build's capped filesystem (farm.workdisk),
removes the build's directories and leaves a final record in the index.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from farm import ecosystems, sinkhole
from farm.admission import check_local_image
from farm.collect import Collected, collect, open_no_follow
from farm.confine import SourcePolicy
from farm.errors import ExitCode, FarmError, SpecError
from farm.fetch.cache import CrateCache
from farm.fetch.phase import fetch
from farm.fetch.registry import Registry
from farm.fetch.resolve import ResolveBounds, resolve_lock
from farm.honeytokens import KINDS as HONEY_KINDS
from farm.honeytokens import Finder, Honeytokens, Marker, Redactor, found_in_file, plant
from farm.layers import overlay
from farm.layers.store import Layer, LayerStore
from farm.logs import CappedLog
from farm.observe.classify import iter_actions
from farm.observe.daemon import HostObserver
from farm.observe.spool import TraceRecord
from farm.observe.verdict import judge, tally
from farm.policy import BuildDirs, sandbox_for, source_date_epoch
from farm.profiles.derive import ProfileBuilder
from farm.profiles.judge import apply as apply_profiles
from farm.profiles.store import ProfileStore
from farm.records import BuildRecord, HoneytokenVerdict, LayerUse, Refusal, Status
from farm.sandbox import Backend, Mount, SandboxResult, SandboxSpec
from farm.settings import SANDBOX_UID, Settings
from farm.snapshot import remove_tree, snapshot
from farm.spec import BuildSpec, format_size
from farm.specdefaults import Interrupted, resolve
from farm.store import Store, TooLarge
from farm.workdisk import create as create_disk
from farm.workdisk import holders, release, usage

#: A Cargo.lock larger than this is not kept for provenance.
MAX_LOCKFILE = 16 << 20
#: Seconds to wait for gVisor's record of a sandbox whose run() raised.
NO_RESULT_WAIT = 5.0


class Observer(Protocol):
    """Where the runner gets what the sandbox's kernel saw (farm.observe.daemon's
    ``HostObserver``). One instance may serve many runners in many threads."""

    def ready(self) -> None:
        """Make sure gVisor's events will be received; raises InfrastructureError."""

    def collect(self, container_id: str, timeout: float | None = None) -> TraceRecord:
        """The container's record, once its sandbox is gone (waiting at most
        ``timeout`` seconds for gVisor to hang up; None: the observer's default),
        read once as a stream."""


@dataclass(frozen=True)
class Reaped:
    """One thing ``Runner.reap`` cleaned up. ``tenant`` is None for a sandbox without a
    record; ``removed`` is empty when the sandbox was already gone."""

    build_id: str
    tenant: str | None
    removed: list[str]
    message: str


#: Called with a finished clean build's record and its target tree, before it is
#: unmounted (farm.layers.flow keeps it as a dependency layer).
KeepTarget = Callable[[BuildRecord, Path], None]


@dataclass(frozen=True)
class LayerPlan:
    """What one build does with dependency layers: mount ``use``, keep its target with
    ``keep``."""

    use: Layer | None = None
    keep: KeepTarget | None = None


def new_build_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runner:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        store: Store,
        *,
        echo: Callable[[bytes], None] | None = None,
        on_phase: Callable[[str, CappedLog | None], None] | None = None,
        observer: Observer | None = None,
        sources: SourcePolicy | None = None,
    ) -> None:
        self.settings = settings
        #: farm serve's policy: every read of a source goes beneath its directory.
        self.sources = sources
        self.backend = backend
        self.store = store
        self.echo = echo
        self.on_phase = on_phase or (lambda phase, log: None)
        if observer is None and settings.observing:
            observer = HostObserver()
        self.observer = observer if settings.observing else None
        #: Build id -> the marker of its honeytokens, while it runs (values in memory only).
        self._honey: dict[str, Marker] = {}
        #: Build id -> its dependency-layer plan, while it runs.
        self._layers: dict[str, LayerPlan] = {}

    def resolving(self, mirror: Path) -> Runner:
        """This runner for builds whose lock is first resolved against ``mirror``
        (farm serve's per-build ``resolve_lock``); it shares everything else."""
        other = copy.copy(self)
        other.settings = dataclasses.replace(self.settings, resolve_mirror=mirror)
        return other

    def within(self, spec: BuildSpec) -> Path | None:
        """The directory ``spec.source`` must be opened beneath, if this runner serves."""
        return self.sources.allowed(spec.tenant) if self.sources else None

    def reap_leftovers(self) -> list[str]:
        """Tear down sandboxes of builds whose farm process died; says what it removed."""
        return [reaped.message for reaped in self.reap()]

    def reap(self) -> list[Reaped]:
        """Like ``reap_leftovers``, one entry per build marked lost or sandbox removed."""
        said: list[Reaped] = []
        live_builds = set()
        for record in self.store.list(status=Status.RUNNING):
            if pid_alive(record.owner_pid):
                live_builds.add(record.id)
                continue
            removed = self.backend.teardown(record.container_id) if record.container_id else []
            removed += self._release(self.settings.work_dir / record.id)
            record.status, record.teardown = Status.LOST, removed
            record.notes.append("farm exited during this build; its sandbox was reaped")
            self.store.save(record)
            what = ", ".join(removed) or "nothing left"
            message = f"reaped build {record.id} left by a crashed run ({what})"
            said.append(Reaped(record.id, record.tenant, removed, message))
        for sandbox_id, build_id in self.backend.list_sandboxes().items():
            # Re-read: a build may have started since the records were listed.
            if build_id not in live_builds and not self._owned_by_live_process(build_id):
                removed = self.backend.teardown(sandbox_id)
                what = ", ".join(removed)
                message = f"reaped leftover sandbox of build {build_id or '?'}: {what}"
                said.append(Reaped(build_id, None, removed, message))
        said += self._reap_disks(live_builds)
        return said

    def _reap_disks(self, live_builds: set[str]) -> list[Reaped]:
        """Filesystems of builds nobody runs any more (their record is gone or final)."""
        said = []
        for build_id in sorted(holders(self.settings.work_dir) - live_builds):
            if self._owner_alive(build_id):
                continue
            removed = self._release(self.settings.work_dir / build_id)
            message = f"reaped leftover filesystem of build {build_id}: {', '.join(removed)}"
            said.append(Reaped(build_id, None, removed, message))
        return said

    def _release(self, root: Path) -> list[str]:
        """Unmount the build's filesystem, then delete its work dir (never the other way:
        ``rm`` would stop at the mount and leave the image attached)."""
        removed = release(root)
        remove_tree(root)
        return removed

    def _owner_alive(self, build_id: str) -> bool:
        """Whatever the record's status: a build saves its final record before its
        ``finally`` unmounts, and that window is not a leftover."""
        try:
            return pid_alive(self.store.get(build_id).owner_pid)
        except FarmError:
            return False  # no record: nobody owns this filesystem

    def _owned_by_live_process(self, build_id: str) -> bool:
        try:
            record = self.store.get(build_id)
        except FarmError:
            return False  # no record (or an ambiguous id): nobody owns this sandbox
        return record.status is Status.RUNNING and pid_alive(record.owner_pid)

    def build(
        self,
        spec: BuildSpec,
        build_id: str | None = None,
        *,
        vary: Callable[[SandboxSpec], SandboxSpec] | None = None,
        layers: LayerPlan | None = None,
    ) -> BuildRecord:
        """Run ``spec`` to a final record. ``build_id`` is given when a queue chose it;
        ``vary`` alters the sandbox for a reproducibility check run (farm.reprocheck),
        after the policy's own checks have passed on the original; ``layers`` mounts a
        dependency layer or keeps the target tree as one (farm.layers.flow). Raises
        NotAdmittedError for an image the host does not allow."""
        check_local_image(self.settings, spec)
        registry = self.registry(spec)  # an unknown name stops here: nothing created yet
        spec = resolve(spec, within=self.within(spec))
        build_id = build_id or new_build_id()
        dirs = BuildDirs(self.settings.work_dir / build_id)
        sandbox = sandbox_for(spec, build_id, dirs, self.settings)
        if vary:
            sandbox = vary(sandbox)
        self.on_phase("preflight", None)
        image_id = self.backend.preflight(sandbox)  # raises before anything exists
        notes = self._toolchain_notes(spec)  # also raises before anything exists
        if self.observer:
            self.observer.ready()  # runsc-observed refuses to start without it anyway
        record = self._start_record(build_id, spec, image_id)
        record.notes.extend(notes)
        tokens = Honeytokens.generate()
        self._honey[build_id] = Marker(Finder(tokens))
        self._layers[build_id] = layers or LayerPlan()
        try:
            return self._run(record, spec, dirs, sandbox, registry, tokens)
        finally:
            self._honey.pop(build_id, None)
            self._layers.pop(build_id, None)
            self._release(dirs.root)

    def _marker(self, build_id: str) -> Marker | None:
        """The honeytokens of a build this runner is running, if any. (The observation
        step also runs alone, on a record already spooled: tests/unit/test_observe_memory.)"""
        return getattr(self, "_honey", {}).get(build_id)

    def _sinkhole_enabled(self) -> bool:
        """The resolver starts from gVisor's root pid 1 (farm.backends.local.backstop):
        not under --insecure-runtime, where pid 1 is the build's own user."""
        return getattr(self.backend, "name", "") == "local" and not self.settings.insecure_runtime

    def registry(self, spec: BuildSpec) -> Registry | None:
        """The operator's registry the spec names, if any; SpecError for another name."""
        if spec.registry is None:
            return None
        found = self.settings.registries.get(spec.registry)
        if found is None:
            known = ", ".join(sorted(self.settings.registries)) or "none"
            raise SpecError(
                [
                    f"registry: {spec.registry!r} is not one of this installation's "
                    f"registries (configured: {known}); the operator adds them (FARM_REGISTRIES)"
                ]
            )
        return found

    def _start_record(self, build_id: str, spec: BuildSpec, image_id: str) -> BuildRecord:
        record = BuildRecord(
            id=build_id,
            status=Status.RUNNING,
            tenant=spec.tenant,
            image=spec.image,
            image_id=image_id,
            runtime=self.settings.effective_runtime,
            insecure_runtime=self.settings.insecure_runtime is not None,
            spec=spec.model_dump(mode="json"),
            created_at=datetime.now(UTC),
            owner_pid=os.getpid(),
        )
        if record.insecure_runtime:
            record.notes.append(
                f"INSECURE: built with runtime {record.runtime!r} instead of gVisor; "
                "the build's code ran directly on the host kernel"
            )
        self.store.save(record)
        return record

    def _toolchain_notes(self, spec: BuildSpec) -> list[str]:
        """The project against the image's toolchain (its ecosystem's check); a backend
        that cannot read image labels skips it. Raises SpecError for a source that
        cannot be opened, before anything exists."""
        if not isinstance(self.backend, ecosystems.ImageLabels):
            return []
        ecosystem = ecosystems.detect(spec.source, self.within(spec), strict=True)
        if ecosystem is None:
            return []
        labels = self.backend.image_labels(spec.image)
        return ecosystem.check_toolchain(spec.source, spec.image, labels, self.within(spec))

    def _run(
        self,
        record: BuildRecord,
        spec: BuildSpec,
        dirs: BuildDirs,
        sandbox: SandboxSpec,
        registry: Registry | None,
        tokens: Honeytokens,
    ) -> BuildRecord:
        started = time.monotonic()
        self.on_phase("snapshot", None)
        log: CappedLog | None = None
        result: SandboxResult | None = None
        try:
            self._make_dirs(dirs, spec.resources.disk)
            self._mount_layer(record, dirs)
            sandbox = plant(sandbox, tokens, dirs.disk / "home")
            if self._sinkhole_enabled():
                sandbox = sinkhole.prepare(sandbox, dirs.root, dirs.disk / "dns")
            record.honeytokens = HoneytokenVerdict(planted=list(HONEY_KINDS))
            record.source_digest = snapshot(
                spec.source,
                dirs.src,
                source_date_epoch(spec),
                max_bytes=spec.resources.disk,
                within=self.within(spec),
            )
            if self.settings.resolve_mirror is not None:
                self._resolve_lock(record, spec, dirs, self.settings.resolve_mirror)
            record.lockfile_sha256 = self._keep_lockfile(dirs)
            if registry is not None:
                sandbox = self._fetch(record, spec, dirs, sandbox, registry)
            log = CappedLog(dirs.root / "build.log", spec.limits.log)
            self.on_phase("build", log)
            # The build's output is redacted before anything keeps or shows it.
            redactor = Redactor(self._honey[record.id].finder, self._sink(log))
            try:
                result = self.backend.run(
                    sandbox, log=redactor.write, on_created=self._created(record)
                )
            finally:
                redactor.close()
        except (Interrupted, KeyboardInterrupt):
            record.status = Status.CANCELLED
            record.notes.append("cancelled by a signal; the sandbox was torn down")
            raise
        except FarmError as exc:
            # Bad input (a FIFO in the source, a command missing from the image) is the
            # user's to fix, not the host's.
            # So is a dependency the fetch phase refused (a checksum mismatch, exit 1).
            user_error = exc.exit_code != ExitCode.INFRASTRUCTURE
            record.status = Status.FAILED if user_error else Status.ERROR
            record.notes.append(str(exc))
            raise
        except Exception as exc:
            record.status = Status.ERROR
            record.notes.append(f"internal error: {exc!r}")
            raise
        finally:
            if log:
                log.close()
            self._finish(record, spec, dirs, log, result, started)
        return record

    def _mount_layer(self, record: BuildRecord, dirs: BuildDirs) -> None:
        """The plan's layer under target/, copy-on-write, if its files are still exactly
        what was kept (a layer altered on the host is removed and the build runs cold)."""
        layer = self._layers.get(record.id, LayerPlan()).use
        if layer is None:
            return
        if not LayerStore(self.settings.home).intact(layer):
            record.notes.append(
                f"dependency layer {layer.id} no longer matches its digest; it was removed "
                "and this build ran cold"
            )
            return
        overlay.mount(layer.tree, dirs.disk, dirs.target)
        record.layer = LayerUse(
            id=layer.id, key=layer.key, digest=layer.digest, built_by=layer.built_by
        )
        record.notes.append(f"started from dependency layer {layer.id} ({layer.digest})")

    def _resolve_lock(
        self, record: BuildRecord, spec: BuildSpec, dirs: BuildDirs, mirror: Path
    ) -> None:
        """``--resolve-lock``: the snapshot (farm's own copy; the tenant's tree is never
        written) gets the Cargo.lock the image's cargo resolves against ``mirror``."""
        self.on_phase("resolve", None)
        resolved = resolve_lock(
            dirs.src,
            mirror,
            settings=self.settings,
            image=spec.image,
            bounds=ResolveBounds.of(spec),
        )
        lock = dirs.src / "Cargo.lock"
        lock.unlink(missing_ok=True)  # the snapshot's own file, never a link (farm.snapshot)
        lock.write_text(resolved.text)
        record.lock_resolution = resolved.resolution
        record.notes.append(resolved.resolution.describe())

    def _fetch(
        self,
        record: BuildRecord,
        spec: BuildSpec,
        dirs: BuildDirs,
        sandbox: SandboxSpec,
        registry: Registry,
    ) -> SandboxSpec:
        """The fetch phase, on the snapshot (so what is fetched is what the lock that is
        built names), before any sandbox exists; its result is mounted read-only."""
        self.on_phase("fetch", None)
        result = fetch(
            dirs.src,
            dirs.root / "fetch",
            registry,
            CrateCache(self.settings.crate_cache),
            max_bytes=spec.resources.disk,
            git_hosts=frozenset(self.settings.git_hosts),
        )
        record.fetched = result.packages
        mounts = [
            Mount(source=m.source, target=m.target, read_only=True) for m in result.build_mounts()
        ]
        return sandbox.model_copy(update={"mounts": [*sandbox.mounts, *mounts]})

    def _keep_lockfile(self, dirs: BuildDirs) -> str | None:
        """The snapshot's Cargo.lock, kept in the store: provenance then lists exactly the
        crates that were built, without reading the user's tree again after the build.
        The copy is farm's own; a Cargo.lock that is a link there is not followed."""
        try:
            with open_no_follow(dirs.src / "Cargo.lock") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    return None
                sha, _ = self.store.put_stream(fh, limit=MAX_LOCKFILE)
        except (OSError, TooLarge):
            return None
        return sha

    def _make_dirs(self, dirs: BuildDirs, disk: int) -> None:
        dirs.root.mkdir(parents=True, mode=0o700)
        create_disk(dirs.image, dirs.disk, disk)
        for writable in (dirs.target, dirs.out):
            writable.mkdir(mode=0o755)
            os.chown(writable, SANDBOX_UID, SANDBOX_UID)

    def _sink(self, log: CappedLog) -> Callable[[bytes], None]:
        if not self.echo:
            return log.write
        echo = self.echo

        def both(chunk: bytes) -> None:
            log.write(chunk)
            echo(chunk)

        return both

    def _created(self, record: BuildRecord) -> Callable[[str], None]:
        def remember(container_id: str) -> None:
            # Saved before start, so a crash of this process can still be reaped by id.
            record.container_id = container_id
            self.store.save(record)

        return remember

    def _finish(
        self,
        record: BuildRecord,
        spec: BuildSpec,
        dirs: BuildDirs,
        log: CappedLog | None,
        result: SandboxResult | None,
        started: float,
    ) -> None:
        """Always leaves a final record: whatever fails here is noted, not lost."""
        self.on_phase("collect", None)
        try:
            self._settle(record, spec, dirs, result)
        except FarmError as exc:
            infra = exc.exit_code == ExitCode.INFRASTRUCTURE
            record.status, record.artifacts = (Status.ERROR if infra else Status.FAILED), []
            record.notes.append(str(exc))
        except Exception as exc:
            # A bug or a host failure while observing or collecting: the result is
            # unproven, so the saved record must not say SUCCEEDED (nor list artifacts).
            record.status, record.artifacts = Status.ERROR, []
            record.notes.append(f"internal error while settling the build: {exc!r}")
            raise
        finally:
            if record.status is Status.FAILED and record.fetched is None and log is not None:
                record.notes += _failure_hints(log.tail())
            self._save_log(record, log)
            record.finished_at = datetime.now(UTC)
            record.duration_seconds = round(time.monotonic() - started, 3)
            self.store.save(record)

    def _settle(
        self, record: BuildRecord, spec: BuildSpec, dirs: BuildDirs, result: SandboxResult | None
    ) -> None:
        if result is not None:
            record.exit_code = result.exit_code
            record.status = _status(result)
            record.teardown = result.teardown
            record.teardown_seconds = result.teardown_seconds
        elif record.container_id:
            # run() did not return, so its own teardown may not have finished.
            record.teardown = self.backend.teardown(record.container_id)
        if result is not None:
            _check_disk(record, spec, dirs)
        if self.observer and record.container_id:
            # When run() raised, the sandbox may never have started (so never connected);
            # its teardown is done, so a record that exists is already complete.
            wait = None if result is not None else NO_RESULT_WAIT
            self._observe(record, spec, dirs, self.observer, wait)
        if record.status is Status.SUCCEEDED:
            self._collect(record, spec, dirs)
        keep = self._layers.get(record.id, LayerPlan()).keep
        if keep and record.status is Status.SUCCEEDED:
            keep(record, dirs.target)

    def _observe(
        self,
        record: BuildRecord,
        spec: BuildSpec,
        dirs: BuildDirs,
        observer: Observer,
        wait: float | None,
    ) -> None:
        trace = observer.collect(record.container_id or "", wait)
        # The snapshot's lockfile is what was built, in a directory only farm writes;
        # the user's tree may have changed since (a link there is not followed).
        versions = ecosystems.lock_versions(dirs.src)
        # A stream end to end: a spool of millions of events is never held in memory,
        # and every action is judged though the record lists a capped number.
        # The profile builder notes execs, opens and actions on the way (one read).
        profiles = ProfileBuilder(versions)
        marker = self._marker(record.id)
        sandbox_dns = dirs.disk / "dns"
        dns_port = sinkhole.PORT if sandbox_dns.exists() else None
        stream = iter_actions(profiles.watch(trace.stream()), versions, dns_port=dns_port)
        if sandbox_dns.exists():
            resolved = sinkhole.read_log(sandbox_dns)
            stream = sinkhole.merge(stream, resolved)
            record.sinkhole_unready = resolved.problem()
            if record.sinkhole_unready:
                record.notes.append(
                    f"{record.sinkhole_unready}: names the build resolved may not be known"
                )
        # Honeytoken values are redacted before profiles or the record see an action.
        stream = marker.mark(stream) if marker else stream
        actions = tally(profiles.actions(stream), spec.observe)
        seen = trace.seen()  # its counts are final once the stream is read
        judge(record, seen, seen.count, actions, spec.observe)
        if marker and record.honeytokens:
            _honey_verdict(record, marker)
        if seen.complete and not seen.lost:  # a partial record would fake a change
            apply_profiles(record, profiles.profiles(), ProfileStore(self.store.home), spec.observe)

    def _save_log(self, record: BuildRecord, log: CappedLog | None) -> None:
        if log is None:
            return
        record.log_sha256, _ = self.store.put_file(log.path)
        record.log_bytes, record.log_truncated_bytes = log.written, log.dropped
        if log.dropped:
            record.notes.append(f"log truncated at {log.cap} bytes; {log.dropped} bytes dropped")

    def _collect(self, record: BuildRecord, spec: BuildSpec, dirs: BuildDirs) -> None:
        got: Collected = collect(dirs, spec.outputs or [], spec.limits, self.store)
        marker = self._marker(record.id)
        if marker:
            _refuse_tokens(record, got, marker.finder, self.store)
        record.artifacts, record.refused = got.artifacts, got.refused
        # A literal output path must exist; a wildcard may legitimately match nothing.
        found = {a.path for a in got.artifacts} | {r.path for r in got.refused}
        for glob in [g for g in spec.outputs or [] if not any(c in g for c in "*?[")]:
            if glob not in found:  # a literal glob matches exactly its own path
                record.refused.append(Refusal(path=glob, reason="declared output matched nothing"))
        if record.refused:
            record.status = Status.FAILED
            record.artifacts = []  # all or nothing: a partial result is not a result
            record.notes += [f"output {r.path} refused: {r.reason}" for r in record.refused]


def _failure_hints(log_tail: list[str]) -> list[str]:
    """The first ecosystem's word on why a build without a fetch phase failed (its
    package manager's error in the log, whatever the argv that ran it)."""
    for ecosystem in ecosystems.ecosystems():
        hint = ecosystem.failure_hint(log_tail)
        if hint:
            return [hint]
    return []


def _refuse_tokens(record: BuildRecord, got: Collected, finder: Finder, store: Store) -> None:
    """Refuse every output that holds a planted token: the build copied a credential
    into what it ships. Its blob is deleted (the token is random, so no other record
    can hold the same bytes) and the build fails like any refused output."""
    kept = []
    for artifact in got.artifacts:
        blob = store.blob_path(artifact.sha256)
        kind = found_in_file(blob, finder)
        if kind is None:
            kept.append(artifact)
            continue
        blob.unlink(missing_ok=True)
        reason = f"contains the planted {kind} honeytoken: the build copied a credential"
        got.refused.append(Refusal(path=artifact.path, reason=reason))
        if record.honeytokens and kind not in record.honeytokens.in_artifacts:
            record.honeytokens.in_artifacts.append(kind)
    got.artifacts = kept
    if record.honeytokens and record.honeytokens.in_artifacts:
        kinds = ", ".join(record.honeytokens.in_artifacts)
        record.notes.append(f"EXFILTRATION: the planted {kinds} credentials are in the outputs")


def _honey_verdict(record: BuildRecord, marker: Marker) -> None:
    """The build's use of its honeytokens, on the record and in its notes."""
    verdict = record.honeytokens
    assert verdict is not None
    verdict.read = sorted(marker.read)
    verdict.exfiltrated = sorted(marker.exfiltrated)
    if verdict.read:
        record.notes.append(
            f"honeytokens read: the build opened farm's planted {', '.join(verdict.read)} "
            "credentials (fake, fresh for this build; severity high)"
        )
    if verdict.exfiltrated:
        record.notes.append(
            f"EXFILTRATION: the value of the planted {', '.join(verdict.exfiltrated)} "
            f"credentials appeared in {marker.leaks} later recorded actions (redacted)"
        )


def _check_disk(record: BuildRecord, spec: BuildSpec, dirs: BuildDirs) -> None:
    """A build that filled its filesystem fails: its writes past the cap were refused
    (ENOSPC), so whatever it produced may be cut short, even if it exited 0."""
    if not usage(dirs.disk).full():
        return
    cap = format_size(spec.resources.disk)
    record.notes.append(
        f"disk limit {cap} reached: target/ and /out together hold at most resources.disk; "
        "raise it (--disk) or make the build write less"
    )
    if record.status is Status.SUCCEEDED:
        record.status = Status.FAILED


def _status(result: SandboxResult) -> Status:
    if result.timed_out:
        return Status.TIMED_OUT
    if result.oom_killed:
        return Status.OOM
    return Status.SUCCEEDED if result.exit_code == 0 else Status.FAILED

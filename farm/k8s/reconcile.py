"""Reconcile one Build: compare what exists with what should, and take the next step.

Callers: ``farm.k8s.controller`` workers, one key at a time (the work queue guarantees
no two workers hold the same key). Level-triggered: every call re-reads the Build and
its Jobs and pods from the API, so a missed event, a duplicate event or a restarted
controller all converge to the same result. Each step is idempotent: objects have
deterministic names, each is read before it is created (so a steady reconcile sends no
create at all), and a 409 on create means a racing reconcile made it first. Status is written with
the Build's resourceVersion; a 409 there means someone else wrote first, and the key is
simply reconciled again. Returns the delay after which to look again, or None.

Phases: Pending → Fetching → Building → Collecting → Succeeded | Failed | Quarantined.
A Build whose spec is invalid (InvalidSpec) or above the operator's ceilings or image
allowlist (ExceedsLimits, ImageNotAllowed: ``farm.admission``) fails before any object
of it is created.
Once the build container has ended, the build is not finished (so not torn down) until
the node monitor's record of that container is in ``status.observation`` or
``observe_grace_seconds`` have passed; the record is then judged by the Build's observe
policy exactly as a local build's (``farm.observe.verdict.judge``), and a succeeded
build is signed (``farm.provenance``). Status is recorded *before* teardown, and
teardown finishes before ``tornDown`` is set.

With ``spec.check`` N the build runs as N build Jobs in parallel (run k varied by
``farm.reprocheck.variation(k)``, as a local ``--check``); once every run has ended and
been observed, each is judged as above, and if all succeeded their artifacts are
compared by ``farm.reprocheck.verdict``. Run 0's record is the Build's.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from farm import reprocheck
from farm.errors import (
    ArtifactServiceError,
    ConflictError,
    KubeNotFoundError,
    KubernetesError,
    SpecError,
)
from farm.k8s import blocked, names, objects
from farm.k8s.artifacts import Ledger, Manifest
from farm.k8s.config import ControllerConfig
from farm.k8s.endpoint import ArtifactEndpoint
from farm.k8s.kube import Kube, Obj
from farm.k8s.objects import BuildRef
from farm.k8s.resource import (
    TERMINAL,
    ArtifactStatus,
    BuildStatus,
    ClusterBuildSpec,
    ObservationStatus,
    RunStatus,
    cluster_spec,
    parse_status,
    run_status,
    set_condition,
)
from farm.k8s.teardown import Teardown
from farm.metrics import Metrics
from farm.observe.verdict import judge
from farm.provenance import attest
from farm.records import BuildRecord, Status
from farm.sandbox import SandboxSpec
from farm.spec import format_size
from farm.store import Store

log = logging.getLogger(__name__)
POLL = 10.0  # seconds: a safety net; watches normally wake the controller sooner
#: Who changes what a refused Build ran into (docs/kubernetes.md).
CLUSTER_HINT = (
    "the cluster operator sets ceilings and allowed_images in the controller's config, "
    "helm values controller.config"
)


@dataclass(frozen=True)
class Ending:
    """How a build ends by its own result, before its observation is judged."""

    phase: str
    reason: str
    message: str
    #: The collector's accepted manifest (a succeeded build only).
    manifest: Manifest | None = None
    #: The build container's image as the kubelet resolved it (``sha256:…``).
    image_id: str | None = None

    @property
    def result(self) -> Status:
        if self.reason == "BuildTimedOut":
            return Status.TIMED_OUT
        return Status.SUCCEEDED if self.phase == "Succeeded" else Status.FAILED


@dataclass
class Run:
    """Where one build run (the build, or a check run) stands in this reconcile."""

    index: int
    #: Its progress in the Build's status (``resource.run_status``).
    state: RunStatus
    #: Its own result, once it has ended and (unless it timed out) been observed.
    ending: Ending | None = None
    #: The node monitor's record of it (or the grace's incomplete one).
    seen: ObservationStatus | None = None
    #: While not done: the phase, reason and message it holds the Build in.
    wait: tuple[str, str, str] | None = None
    #: When to look again while waiting.
    delay: float = POLL


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: ControllerConfig,
        ledger: Ledger,
        store: Store,
        metrics: Metrics,
    ) -> None:
        self.kube, self.config, self.ledger = kube, config, ledger
        self.store, self.metrics = store, metrics
        self.teardown = Teardown(kube, metrics)
        self.endpoint = ArtifactEndpoint(kube, config)

    # --- entry point ------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            build = self.kube.get_build(namespace, name)
        except KubeNotFoundError:
            return None
        meta = build["metadata"]
        generation = int(meta.get("generation") or 1)
        ref = BuildRef(namespace, name, meta["uid"], generation, self.config.run_namespace)
        try:
            if meta.get("deletionTimestamp"):
                return self._finalize(build, ref)
            if names.FINALIZER not in (meta.get("finalizers") or []):
                self.kube.patch_build_metadata(
                    build, {"finalizers": [*(meta.get("finalizers") or []), names.FINALIZER]}
                )
                return 0.0
            status = parse_status(build.get("status"))
            if status.phase in TERMINAL:
                return self._teardown_finished(build, ref, status)
            return self._advance(build, ref, status)
        except ConflictError:
            return 0.0  # someone wrote first: read again and redo the step

    # --- phases -----------------------------------------------------------------------
    def _advance(self, build: Obj, ref: BuildRef, status: BuildStatus) -> float | None:
        try:
            spec = cluster_spec(build.get("spec") or {})
            self.config.registry_for(spec.registry)  # one of the operator's, by name
        except SpecError as exc:
            invalid = [Run(0, status, failed("InvalidSpec", str(exc)))]
            return self._finish(build, ref, status, invalid)
        refused = self._refusal(spec)
        if refused is not None:
            return self._finish(build, ref, status, [Run(0, status, refused)])
        sandbox = objects.sandbox_spec(ref, spec)
        self._ensure_common(ref)
        if status.startTime is None:
            status.startTime = _now()
        if status.fetchTime is None:
            waiting = self._fetch(build, ref, spec, sandbox, status)
            if waiting is not None:
                return waiting
        node = self._run0_node(ref) if spec.check > 1 else None
        runs = [self._run(ref, spec, sandbox, status, k, node) for k in range(max(1, spec.check))]
        delay = self._wait(build, ref, status, runs)
        return delay if delay is not None else self._finish(build, ref, status, runs, spec)

    def _fetch(
        self,
        build: Obj,
        ref: BuildRef,
        spec: ClusterBuildSpec,
        sandbox: SandboxSpec,
        status: BuildStatus,
    ) -> float | None:
        """Run the fetch Job until it succeeds; then record that in ``status.fetchTime``
        (written with the runs' status) and return None. Only called before that: the
        Job's TTL deletes it an hour after it finished, and an ``_ensure`` then would
        fetch again under the running build."""
        fetch = self._ensure(objects.fetch_job(ref, spec, sandbox, self.config))
        state, why = job_state(fetch)
        if state == "suspended":
            return self._set(build, ref, status, "Pending", "Queued", "waiting for Kueue")
        if state == "failed":
            return self._finish(build, ref, status, [Run(0, status, failed("FetchFailed", why))])
        if state != "succeeded":
            return self._set(build, ref, status, "Fetching", "Fetching", "fetch Job running")
        status.fetchTime = _now()
        return None

    def _refusal(self, spec: ClusterBuildSpec) -> Ending | None:
        """How a valid spec the operator does not allow ends (farm.admission), before
        anything is created; None if it is admitted."""
        problems = self.config.admission().check(spec)
        if not problems:
            return None
        reason = "ExceedsLimits" if self.config.ceilings.check(spec) else "ImageNotAllowed"
        return failed(reason, "; ".join(problems) + f" ({CLUSTER_HINT})")

    def _run(
        self,
        ref: BuildRef,
        spec: ClusterBuildSpec,
        sandbox: SandboxSpec,
        status: BuildStatus,
        k: int,
        node: str | None,
    ) -> Run:
        """Create run ``k``'s build Job (if needed) and see where it stands. ``node`` is
        run 0's node, once its pod has one (runs 1.. need it)."""
        token = self._token(ref, k)  # before the Job: its pod mounts the token Secret
        try:
            job = self._run_job(ref, spec, sandbox, k, node)
        except ArtifactServiceError as exc:
            # The operator's to fix (the install), not the build's: wait, re-checked
            # each poll, rather than fail Builds while a Service is being re-created.
            waiting = ("Building", "ArtifactServiceMissing", f"no build Job yet: {exc}")
            return Run(k, run_status(status, k), wait=waiting)
        if job is None:
            waiting = ("Building", "Building", f"check run {k} waits for run 0's node")
            return Run(k, run_status(status, k), wait=waiting)
        return self._progress(ref, spec, Run(k, run_status(status, k)), job, token)

    def _run_job(
        self, ref: BuildRef, spec: ClusterBuildSpec, sandbox: SandboxSpec, k: int, node: str | None
    ) -> Obj | None:
        """Run ``k``'s Job, created if needed. Runs 1.. share run 0's ReadWriteOnce
        sources volume, so they are pinned to its node and wait (None) until run 0's pod
        has one, unless their Job exists already (made before a controller restart).
        An existing Job is read first: it needs no artifact address, so a Service
        lookup that fails later does not hold up builds already running.
        Raises ArtifactServiceError if a Job is to be made but the Service has no address."""
        role = names.run_role("build", k)
        existing = self._existing("Job", ref.run_namespace, ref.object_name(role))
        if existing is not None or (k and not node):
            return existing
        vary = reprocheck.variation(k)  # as local --check's run k
        varied = vary(sandbox) if vary else sandbox
        url = self.endpoint.url()
        job = objects.build_job(ref, spec, varied, self.config, k, node, artifact_url=url)
        return self._ensure(job)

    def _run0_node(self, ref: BuildRef) -> str | None:
        """The node of run 0's pod, once the scheduler has given it one."""
        job = self._existing("Job", ref.run_namespace, ref.object_name("build"))
        if job is None:
            return None
        return pod_node(self._pod(job)) or None

    def _existing(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return {**self.kube.get(kind, namespace, name), "kind": kind}
        except KubeNotFoundError:
            return None

    def _progress(
        self, ref: BuildRef, spec: ClusterBuildSpec, run: Run, job: Obj, token: str
    ) -> Run:
        """``run`` with its ending and observation, or with what it still waits for."""
        k, state = run.index, run.state
        pod = self._pod(job)
        if pod is not None:
            state.containerIDs = container_ids(pod)
        exit_code = build_exit_code(pod)
        job_is, why = job_state(job)
        full = disk_full(spec, pod)
        if pod is None or exit_code is None:
            if full is not None:
                return Run(k, state, full)
            if job_is == "failed":  # deadline or eviction before the build ended
                return Run(k, state, failed("BuildTimedOut", why))
            return Run(k, state, wait=("Building", "Building", "build running"))
        state.exitCode = exit_code
        state.exitTime = state.exitTime or _now()
        ending = full or self._ending(ref, spec, state, token, (job_is, why), k)
        if ending is None:
            return Run(k, state, wait=("Collecting", "Collecting", "uploading /out"))
        return self._observed(ref, spec, run, pod, ending)

    def _observed(
        self, ref: BuildRef, spec: ClusterBuildSpec, run: Run, pod: Obj, ending: Ending
    ) -> Run:
        """``run`` judged-ready once the node monitor's record is in (or the grace over)."""
        k, state = run.index, run.state
        seen = self._observation(state, build_container_id(pod) or "", pod_node(pod))
        if seen is None:
            phase = "Collecting" if state.exitCode == 0 else "Building"
            message = "waiting for the node monitor's record of the build container"
            stray = stray_report(state, pod_node(pod))
            if stray:
                message = f"{message}; {stray}"
            # The monitor's status patch wakes the Build's watch; this bounds the grace.
            delay = max(0.5, min(POLL, self._grace_left(state)))
            return Run(k, state, wait=(phase, "Observing", message), delay=delay)
        if seen is state.observation:  # the monitor's record, not the grace's stand-in
            blocked.stash(self.store, state)
        self._record_log(ref, spec, state, pod)
        return Run(k, state, replace(ending, image_id=build_image_id(pod)), seen)

    def _wait(
        self, build: Obj, ref: BuildRef, status: BuildStatus, runs: list[Run]
    ) -> float | None:
        """Hold the Build in the phase of its least advanced run; None once all are done."""
        waiting = [(r.wait, r) for r in runs if r.wait is not None]
        if not waiting:
            return None
        order = ("Building", "Collecting")
        (phase, reason, message), first = min(
            waiting, key=lambda w: (order.index(w[0][0]), w[1].index)
        )
        if len(runs) > 1:
            message = f"run {first.index}: {message} ({len(waiting)} of {len(runs)} runs not done)"
        self._set(build, ref, status, phase, reason, message)
        return min(r.delay for _, r in waiting)

    def _ending(
        self,
        ref: BuildRef,
        spec: ClusterBuildSpec,
        state: RunStatus,
        token: str,
        job: tuple[str, str],
        run: int,
    ) -> Ending | None:
        """The run's own result once it has one; None while the collector uploads.
        ``job`` is the Job's state and why (``job_state``)."""
        if state.exitCode != 0:
            return failed("BuildFailed", f"the build exited with status {state.exitCode}")
        self._ensure(objects.collect_policy(ref, self.config, run))
        key = ref.upload_key(run)
        self.ledger.expect(key, token, spec.limits)
        manifest = self.ledger.result(key)
        if manifest is not None:
            message = f"{len(manifest.artifacts)} artifacts, {len(manifest.refused)} refused"
            return Ending("Succeeded", "Succeeded", message, manifest)
        job_is, why = job
        if job_is in ("failed", "succeeded"):  # the Job ended without the manifest
            message = f"the collector ended without delivering a manifest ({why or job_is})"
            return failed("CollectionFailed", message)
        return None

    def _observation(
        self, status: RunStatus, container_id: str, node: str
    ) -> ObservationStatus | None:
        """The record of the build container by the monitor of ``node``, the node the
        build pod ran on; None while it may still come. A record that names another node
        (a misconfigured or misrouted monitor) is not accepted; the name is the
        monitor's own claim, so this does not stop a compromised one. After the grace, an
        incomplete record saying it never came, so that a missing monitor (or a pod it
        never saw) cannot pass for a clean build."""
        seen = status.observation
        if seen is not None and seen.containerID == container_id and seen.nodeName == node:
            return seen
        if self._grace_left(status) > 0:
            return None
        grace = self.config.observe_grace_seconds
        problem = f"the node monitor never reported container {container_id} within {grace}s"
        stray = stray_report(status, node)
        if stray:
            problem = f"{problem} ({stray})"
        return ObservationStatus(containerID=container_id, complete=False, problem=problem)

    def _grace_left(self, status: RunStatus) -> float:
        waited = (_now() - (status.exitTime or _now())).total_seconds()
        return self.config.observe_grace_seconds - waited

    def _teardown_finished(self, build: Obj, ref: BuildRef, status: BuildStatus) -> float | None:
        if status.tornDown:
            return None
        if not self.teardown.step(ref.run_namespace, ref.uid):
            return 1.0
        self._forget_uploads(ref)
        status.tornDown = True
        set_condition(status, "TornDown", "True", "Deleted", "all objects removed", ref.generation)
        self._write(build, status)
        self.kube.event(build, "TornDown", "deleted the Jobs, pods, policies, secret and volume")
        return None

    def _finalize(self, build: Obj, ref: BuildRef) -> float | None:
        meta = build["metadata"]
        if names.FINALIZER not in (meta.get("finalizers") or []):
            return None
        if not self.teardown.step(ref.run_namespace, ref.uid):
            return 1.0
        self._forget_uploads(ref)
        rest = [f for f in meta["finalizers"] if f != names.FINALIZER]
        self.kube.patch_build_metadata(build, {"finalizers": rest})
        return None

    def _forget_uploads(self, ref: BuildRef) -> None:
        # Every run a check may have had: the spec may be unreadable by now.
        for run in range(reprocheck.MAX_RUNS):
            self.ledger.forget(ref.upload_key(run))

    # --- objects ----------------------------------------------------------------------
    def _ensure(self, obj: Obj) -> Obj:
        """Create ``obj`` unless it exists; either way return the live object. It is
        read first, and created only if absent: a steady reconcile of a running Build
        sends only GETs, not a failing POST per object (each one a write the API server
        must admit and refuse).

        Adopting an object that exists is safe only because every ``obj`` is in the run
        namespace, where nobody but this controller may create these kinds (tenants
        have no grant there; pods come only from the Job controller): one that exists
        is this controller's own, made before a restart or by a racing reconcile. In
        the Build's namespace, whoever may edit it could plant a token Secret or a
        sources volume of their choosing under the expected name. The uid label check
        below is not a security check (labels are forgeable); it turns a name collision
        between two Builds (same name, same 8-hex uid hash) into an error rather than
        one Build using the other's object.

        Raises KubernetesError if an object of the name exists for another Build."""
        meta = obj["metadata"]
        assert meta["namespace"] == self.config.run_namespace, meta
        live = self._existing(obj["kind"], meta["namespace"], meta["name"])
        if live is None:
            try:
                return {**self.kube.create(obj), "kind": obj["kind"]}
            except ConflictError:  # made between the GET and the POST (a racing reconcile)
                live = self.kube.get(obj["kind"], meta["namespace"], meta["name"])
        owner = (live["metadata"].get("labels") or {}).get(names.BUILD_LABEL)
        if owner != meta["labels"][names.BUILD_LABEL]:
            raise KubernetesError(
                f"{obj['kind']} {meta['namespace']}/{meta['name']} exists for another Build "
                f"(uid {owner}); delete it or rename the Build"
            )
        return {**live, "kind": obj["kind"]}

    def _ensure_common(self, ref: BuildRef) -> None:
        self._ensure(objects.service_account(ref))
        self._ensure(objects.source_claim(ref, self.config))
        self._ensure(objects.fetch_policy(ref, self.config))
        self._ensure(objects.build_policy(ref))
        self._token(ref, 0)  # before any Job, as it has always been

    def _token(self, ref: BuildRef, run: int) -> str:
        """Run ``run``'s upload token (its own Secret, so one run's collector cannot
        upload as another)."""
        secret = self._ensure(objects.token_secret(ref, secrets.token_urlsafe(32), run))
        return base64.b64decode(secret["data"]["token"]).decode()

    def _pod(self, job: Obj) -> Obj | None:
        """The newest pod of ``job``: by the Job controller's own label (the Job's uid)
        and its controller ownerReference, never by farm's labels, which anyone who may
        create a pod could copy. In the run namespace only the Job controller creates
        pods, so the pod a build's exit code, log and node come from is the Job's."""
        meta = job["metadata"]
        pods = [
            p
            for p in self.kube.list(
                "Pod", meta["namespace"], f"{names.JOB_UID_LABEL}={meta['uid']}"
            )
            if controlled_by(p, meta["uid"])
        ]
        return max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)

    def _record_log(
        self, ref: BuildRef, spec: ClusterBuildSpec, status: RunStatus, pod: Obj | None
    ) -> None:
        if pod is None or status.logSha256:
            return
        try:
            data = self.kube.pod_log(
                pod["metadata"]["namespace"], pod["metadata"]["name"], "build", spec.limits.log
            )
        except KubernetesError as exc:
            log.warning("no log for %s: %s", ref.name, exc)
            return
        status.logSha256, _ = self.store.put_stream(io.BytesIO(data), limit=spec.limits.log)

    # --- status -----------------------------------------------------------------------
    def _set(
        self, build: Obj, ref: BuildRef, status: BuildStatus, phase: str, reason: str, message: str
    ) -> float:
        changed = status.phase != phase
        status.phase = phase  # type: ignore[assignment]
        status.message = message
        status.observedGeneration = ref.generation
        set_condition(status, "Succeeded", "Unknown", reason, message, ref.generation)
        if changed or build.get("status") != dump(status):
            self._write(build, status)
        if changed:
            self.kube.event(build, reason, message)
        return POLL

    def _finish(
        self,
        build: Obj,
        ref: BuildRef,
        status: BuildStatus,
        runs: list[Run],
        spec: ClusterBuildSpec | None = None,
    ) -> float:
        """Judge, compare, record, sign and write the end of a build; teardown comes
        next. ``runs`` have all ended (``spec`` is None when the build never ran)."""
        status.completionTime = _now()
        records = [self._judged(build, ref, status, run, spec) for run in runs]
        primary = records[0]
        if runs[0].ending and runs[0].ending.manifest is not None:
            record_artifacts(status, runs[0].ending.manifest)
        if len(runs) > 1:
            self._compare(status, records)
        ending = outcome(runs, records)  # after the comparison: it may fail the build
        if ending.phase == "Quarantined":
            # Withheld, as locally; a check run's attempt taints run 0's artifacts too,
            # since they came from the same code.
            if primary.status is not Status.QUARANTINED:
                primary.status, primary.artifacts = Status.QUARANTINED, []
                primary.notes.append(f"artifacts withheld: {ending.message}")
            status.artifacts, status.digest = [], ""
        # The store's record first: once the status says finished, the record exists.
        if primary.status is Status.SUCCEEDED and spec is not None:
            status.provenance = attest(primary, spec, self.store, self.store.home, "kubernetes")
        else:
            self.store.save(primary)
        self._write_end(build, ref, status, ending)
        # Counted once the status is written: a 409 above redoes this whole step.
        self.metrics.builds.labels(tenant=primary.tenant, result=primary.status.value).inc()
        if primary.reproducibility is not None:
            result = primary.reproducibility.result
            self.metrics.repro_checks.labels(primary.tenant, result).inc()
        return 0.0  # teardown next, now that the status is recorded

    def _judged(
        self,
        build: Obj,
        ref: BuildRef,
        status: BuildStatus,
        run: Run,
        spec: ClusterBuildSpec | None,
    ) -> BuildRecord:
        """Run ``run``'s record, judged by the Build's observe policy if it was observed."""
        assert run.ending is not None
        record = build_record(build, ref, status, run.index, run.ending)
        if spec is not None and run.seen is not None:
            seen, actions = blocked.stored(self.store, run.seen)
            judge(record, seen, seen.events, actions, spec.observe, unlisted=seen.unlisted)
        return record

    def _compare(self, status: BuildStatus, records: list[BuildRecord]) -> None:
        """The check's verdict, on run 0's record and in the status, as ``farm build
        --check`` leaves it; the other runs' records are stored for ``farm show``."""
        primary = records[0]
        verdict = reprocheck.verdict(records, len(records), reprocheck.SANDBOX_VARIATIONS)
        primary.reproducibility = verdict
        primary.notes.append(verdict.line())
        status.reproducible = None if verdict.result == "error" else verdict.reproducible
        # With a failed run every path "differs"; only a real comparison names paths.
        status.differing = verdict.differing if verdict.result == "unreproducible" else []
        for index, other in enumerate(records[1:], start=1):
            other.notes.append(f"check run {index + 1} of {len(records)} for build {primary.id}")
            self.store.save(other)

    def _write_end(self, build: Obj, ref: BuildRef, status: BuildStatus, ending: Ending) -> None:
        status.phase = ending.phase  # type: ignore[assignment]
        status.message = ending.message
        status.observedGeneration = ref.generation
        value = "True" if ending.phase == "Succeeded" else "False"
        set_condition(status, "Succeeded", value, ending.reason, ending.message, ref.generation)
        set_condition(status, "TornDown", "False", "Pending", "teardown next", ref.generation)
        self._write(build, status)
        self.kube.event(build, ending.reason, ending.message, warning=value != "True")

    def _write(self, build: Obj, status: BuildStatus) -> None:
        build.update(self.kube.replace_build_status(build, dump(status)))


def build_record(
    build: Obj, ref: BuildRef, status: BuildStatus, run: int, ending: Ending
) -> BuildRecord:
    """The same record a local build leaves in the store, so ``farm show``, ``farm
    artifacts``, ``farm report`` and ``farm provenance`` work on the controller's store.
    The id is the Build's ``<namespace>.<name>.<uid8>``; check run k's is
    ``<namespace>.<name>.run<k>-<uid8>``, not an extension of the Build's, since the
    store accepts a unique prefix of an id."""
    spec = build.get("spec") or {}
    tenant = str(spec.get("tenant") or "default")[:63]
    state = run_status(status, run)
    finished = status.completionTime or datetime.now(UTC)
    started = status.startTime or finished
    manifest = ending.manifest or Manifest(artifacts=[])
    return BuildRecord(
        id=names.record_id(ref.namespace, ref.name, ref.uid, run),
        status=ending.result,
        tenant=tenant,
        image=str(spec.get("image") or ""),
        image_id=ending.image_id,
        runtime=f"kubernetes RuntimeClass {names.RUNTIME_CLASS}",
        spec=spec,
        created_at=started,
        finished_at=finished,
        duration_seconds=(finished - started).total_seconds(),
        exit_code=state.exitCode,
        container_id=state.containerIDs[0] if state.containerIDs else None,
        artifacts=list(manifest.artifacts),
        refused=list(manifest.refused),
        log_sha256=state.logSha256 or None,
        lockfile_sha256=manifest.lockfile.sha256 if manifest.lockfile else None,
        blocked_actions_sha256=_stored_actions(state),
        notes=[ending.message],
    )


def _stored_actions(state: RunStatus) -> str | None:
    seen = state.observation
    return seen.actionsSha256 if seen is not None and seen.actionsSha256 else None


def failed(reason: str, message: str) -> Ending:
    return Ending("Failed", reason, message)


def outcome(runs: list[Run], records: list[BuildRecord]) -> Ending:
    """How the Build ends: quarantined if any run was, else failed if any run failed,
    else (a check) failed if the runs' artifacts differ, else as run 0 ended. A check
    run's problem is named with its run."""
    named = len(runs) > 1
    for run, record in zip(runs, records, strict=True):
        if record.status is Status.QUARANTINED:
            reasons = record.observation.quarantine_reasons if record.observation else []
            return Ending("Quarantined", "Quarantined", _of(run, "; ".join(reasons), named))
    for run, record in zip(runs, records, strict=True):
        if record.status is not Status.SUCCEEDED:
            assert run.ending is not None
            return replace(run.ending, message=_of(run, run.ending.message, named))
    verdict = records[0].reproducibility
    if verdict is not None and not verdict.reproducible:
        return failed("Unreproducible", verdict.line())
    assert runs[0].ending is not None
    return runs[0].ending


def _of(run: Run, message: str, named: bool) -> str:
    return f"run {run.index}: {message}" if named else message


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def dump(status: BuildStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude_none=True)


#: How the kubelet words an eviction for the pod's own ephemeral-storage limits (its
#: eviction helpers), as opposed to node pressure, which is not the build's doing.
STORAGE_EVICTIONS = (
    "exceeds the total limit of containers",
    "exceeded its local ephemeral storage limit",
    "Usage of EmptyDir volume",
)


def disk_full(spec: ClusterBuildSpec, pod: Obj | None) -> Ending | None:
    """The build's failure when the kubelet evicted its pod for writing past
    ``resources.disk`` (farm.k8s.objects sizes the volumes and ephemeral-storage)."""
    status = (pod or {}).get("status") or {}
    message = str(status.get("message") or "").strip()
    if status.get("reason") != "Evicted" or not any(s in message for s in STORAGE_EVICTIONS):
        return None
    cap = format_size(spec.resources.disk)
    return failed("DiskLimitReached", f"disk limit {cap} reached: {message}")


def job_state(job: Obj) -> tuple[str, str]:
    """("suspended"|"running"|"succeeded"|"failed", reason) from a Job's status."""
    if (job.get("spec") or {}).get("suspend"):
        return "suspended", ""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "succeeded", ""
        if cond.get("type") == "Failed":
            return "failed", f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    return "running", ""


def _build_container(pod: Obj | None) -> dict[str, Any]:
    """The kubelet's status of the ``build`` init container ({} before it has one)."""
    for st in ((pod or {}).get("status") or {}).get("initContainerStatuses") or []:
        if st.get("name") == "build":
            return dict(st)
    return {}


def build_exit_code(pod: Obj | None) -> int | None:
    """Exit code of the ``build`` init container, None while it has not terminated.
    The kubelet reports it, so the (untrusted) build cannot forge it."""
    terminated = (_build_container(pod).get("state") or {}).get("terminated")
    return int(terminated.get("exitCode", 1)) if terminated else None


def build_container_id(pod: Obj | None) -> str | None:
    """The runtime id of the ``build`` init container: the id runsc names its sandbox
    by, so the node monitor's record and the controller's wait agree on it."""
    found = _build_container(pod).get("containerID")
    return str(found).split("://", 1)[-1] if found else None


def controlled_by(obj: Obj, uid: str) -> bool:
    """Whether ``obj``'s controller ownerReference is the object with ``uid``."""
    owners = obj["metadata"].get("ownerReferences") or []
    return any(o.get("uid") == uid and o.get("controller") for o in owners)


def pod_node(pod: Obj | None) -> str:
    """The node the scheduler bound the pod to (``spec.nodeName``; "" before that)."""
    return str(((pod or {}).get("spec") or {}).get("nodeName") or "")


def stray_report(status: RunStatus, node: str) -> str:
    """Why the run's record in status is not accepted, if it came from the monitor of a
    node other than ``node`` (the build pod's); "" otherwise."""
    seen = status.observation
    if seen is None or seen.nodeName == node:
        return ""
    sender = seen.nodeName or "an unnamed node"
    return f"ignored a record from the node monitor of {sender}: the build pod ran on {node}"


def build_image_id(pod: Obj | None) -> str | None:
    """The build image's digest as the kubelet resolved it (``repo@sha256:…`` → ``sha256:…``)."""
    found = _build_container(pod).get("imageID")
    return str(found).rsplit("@", 1)[-1] if found else None


def container_ids(pod: Obj) -> list[str]:
    """Runtime ids (``containerd://<id>`` → ``<id>``): gVisor names sandboxes by them."""
    status = pod.get("status") or {}
    found = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    return [s["containerID"].split("://", 1)[-1] for s in found if s.get("containerID")]


def record_artifacts(status: BuildStatus, manifest: Manifest) -> None:
    status.artifacts = [ArtifactStatus(**a.model_dump()) for a in manifest.artifacts]
    status.refused = [f"{r.path}: {r.reason}" for r in manifest.refused]
    lines = "".join(
        f"{a.sha256}  {a.size}  {a.path}\n"
        for a in sorted(manifest.artifacts, key=lambda a: a.path)
    )
    status.digest = "sha256:" + hashlib.sha256(lines.encode()).hexdigest()

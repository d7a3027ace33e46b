"""Reconcile one Build: compare what exists with what should, and take the next step.

Callers: ``farm.k8s.controller`` workers, one key at a time (the work queue guarantees
no two workers hold the same key). Level-triggered: every call re-reads the Build and
its Jobs and pods from the API, so a missed event, a duplicate event or a restarted
controller all converge to the same result. Each step is idempotent: objects have
deterministic names and a 409 on create means "already there". Status is written with
the Build's resourceVersion; a 409 there means someone else wrote first, and the key is
simply reconciled again. Returns the delay after which to look again, or None.

Phases: Pending → Fetching → Building → Collecting → Succeeded | Failed | Quarantined.
Once the build container has ended, the build is not finished (so not torn down) until
the node monitor's record of that container is in ``status.observation`` or
``observe_grace_seconds`` have passed; the record is then judged by the Build's observe
policy exactly as a local build's (``farm.observe.verdict.judge``), and a succeeded
build is signed (``farm.provenance``). Status is recorded *before* teardown, and
teardown finishes before ``tornDown`` is set.
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

from farm.errors import ConflictError, KubeNotFoundError, KubernetesError, SpecError
from farm.k8s import names, objects
from farm.k8s.artifacts import Ledger, Manifest
from farm.k8s.config import ControllerConfig
from farm.k8s.kube import Kube, Obj
from farm.k8s.objects import BuildRef
from farm.k8s.resource import (
    TERMINAL,
    ArtifactStatus,
    BuildStatus,
    ClusterBuildSpec,
    ObservationStatus,
    cluster_spec,
    parse_status,
    set_condition,
)
from farm.k8s.teardown import Teardown
from farm.metrics import Metrics
from farm.observe.verdict import judge
from farm.provenance import attest
from farm.records import Artifact, BuildRecord, Refusal, Status
from farm.store import Store

log = logging.getLogger(__name__)
POLL = 10.0  # seconds: a safety net; watches normally wake the controller sooner


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

    # --- entry point ------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            build = self.kube.get_build(namespace, name)
        except KubeNotFoundError:
            return None
        meta = build["metadata"]
        ref = BuildRef(namespace, name, meta["uid"], int(meta.get("generation") or 1))
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
        except SpecError as exc:
            return self._finish(build, ref, status, Ending("Failed", "InvalidSpec", str(exc)))
        sandbox = objects.sandbox_spec(ref, spec)
        token = self._ensure_common(ref, spec)
        fetch = self._ensure(objects.fetch_job(ref, spec, sandbox, self.config))
        if status.startTime is None:
            status.startTime = _now()
        state, why = job_state(fetch)
        if state == "suspended":
            return self._set(build, ref, status, "Pending", "Queued", "waiting for Kueue")
        if state == "failed":
            return self._finish(build, ref, status, Ending("Failed", "FetchFailed", why))
        if state != "succeeded":
            return self._set(build, ref, status, "Fetching", "Fetching", "fetch Job running")
        job = self._ensure(objects.build_job(ref, spec, sandbox, self.config))
        return self._building(build, ref, status, spec, job, token)

    def _building(
        self,
        build: Obj,
        ref: BuildRef,
        status: BuildStatus,
        spec: ClusterBuildSpec,
        job: Obj,
        token: str,
    ) -> float | None:
        pod = self._pod(ref, "build")
        if pod is not None:
            status.containerIDs = container_ids(pod)
        exit_code = build_exit_code(pod)
        state, why = job_state(job)
        if pod is None or exit_code is None:
            if state == "failed":  # deadline or eviction before the build ended
                timed_out = Ending("Failed", "BuildTimedOut", why)
                return self._finish(build, ref, status, timed_out)
            return self._set(build, ref, status, "Building", "Building", "build running")
        status.exitCode = exit_code
        status.exitTime = status.exitTime or _now()
        ending = self._ending(ref, spec, status, token, (state, why))
        if ending is None:
            return self._set(build, ref, status, "Collecting", "Collecting", "uploading /out")
        seen = self._observation(status, build_container_id(pod) or "")
        if seen is None:
            return self._await_observation(build, ref, status)
        self._record_log(ref, spec, status, pod)
        ending = replace(ending, image_id=build_image_id(pod))
        return self._finish(build, ref, status, ending, spec, seen)

    def _ending(
        self,
        ref: BuildRef,
        spec: ClusterBuildSpec,
        status: BuildStatus,
        token: str,
        job: tuple[str, str],
    ) -> Ending | None:
        """The build's own result once it has one; None while the collector uploads.
        ``job`` is the Job's state and why (``job_state``)."""
        if status.exitCode != 0:
            message = f"the build exited with status {status.exitCode}"
            return Ending("Failed", "BuildFailed", message)
        self._ensure(objects.collect_policy(ref, self.config))
        key = collect_key(ref)
        self.ledger.expect(key, token, spec.limits)
        manifest = self.ledger.result(key)
        if manifest is not None:
            message = f"{len(manifest.artifacts)} artifacts, {len(manifest.refused)} refused"
            return Ending("Succeeded", "Succeeded", message, manifest)
        state, why = job
        if state in ("failed", "succeeded"):  # the Job ended without the manifest
            message = f"the collector ended without delivering a manifest ({why or state})"
            return Ending("Failed", "CollectionFailed", message)
        return None

    def _observation(self, status: BuildStatus, container_id: str) -> ObservationStatus | None:
        """The node monitor's record of the build container; None while it may still
        come. After the grace, an incomplete record saying it never came, so that a
        missing monitor (or a pod it never saw) cannot pass for a clean build."""
        seen = status.observation
        if seen is not None and seen.containerID == container_id:
            return seen
        if self._grace_left(status) > 0:
            return None
        grace = self.config.observe_grace_seconds
        problem = f"the node monitor never reported container {container_id} within {grace}s"
        return ObservationStatus(containerID=container_id, complete=False, problem=problem)

    def _grace_left(self, status: BuildStatus) -> float:
        waited = (_now() - (status.exitTime or _now())).total_seconds()
        return self.config.observe_grace_seconds - waited

    def _await_observation(self, build: Obj, ref: BuildRef, status: BuildStatus) -> float:
        phase = "Collecting" if status.exitCode == 0 else "Building"
        message = "waiting for the node monitor's record of the build container"
        self._set(build, ref, status, phase, "Observing", message)
        # The monitor's status patch wakes the Build's watch; this bounds the grace.
        return max(0.5, min(POLL, self._grace_left(status)))

    def _teardown_finished(self, build: Obj, ref: BuildRef, status: BuildStatus) -> float | None:
        if status.tornDown:
            return None
        if not self.teardown.step(ref.namespace, names.short_uid(ref.uid)):
            return 1.0
        self.ledger.forget(collect_key(ref))
        status.tornDown = True
        set_condition(status, "TornDown", "True", "Deleted", "all objects removed", ref.generation)
        self._write(build, status)
        self.kube.event(build, "TornDown", "deleted the Jobs, pods, policies, secret and volume")
        return None

    def _finalize(self, build: Obj, ref: BuildRef) -> float | None:
        meta = build["metadata"]
        if names.FINALIZER not in (meta.get("finalizers") or []):
            return None
        if not self.teardown.step(ref.namespace, names.short_uid(ref.uid)):
            return 1.0
        self.ledger.forget(collect_key(ref))
        rest = [f for f in meta["finalizers"] if f != names.FINALIZER]
        self.kube.patch_build_metadata(build, {"finalizers": rest})
        return None

    # --- objects ----------------------------------------------------------------------
    def _ensure(self, obj: Obj) -> Obj:
        """Create ``obj`` unless it exists; either way return the live object."""
        meta = obj["metadata"]
        try:
            return {**self.kube.create(obj), "kind": obj["kind"]}
        except ConflictError:
            return {
                **self.kube.get(obj["kind"], meta["namespace"], meta["name"]),
                "kind": obj["kind"],
            }

    def _ensure_common(self, ref: BuildRef, spec: ClusterBuildSpec) -> str:
        self._ensure(objects.service_account(ref))
        self._ensure(objects.source_claim(ref, self.config))
        self._ensure(objects.fetch_policy(ref, self.config))
        self._ensure(objects.build_policy(ref))
        secret = self._ensure(objects.token_secret(ref, secrets.token_urlsafe(32)))
        return base64.b64decode(secret["data"]["token"]).decode()

    def _pod(self, ref: BuildRef, phase: str) -> Obj | None:
        sel = f"{names.BUILD_LABEL}={names.short_uid(ref.uid)},{names.PHASE_LABEL}={phase}"
        pods = self.kube.list("Pod", ref.namespace, sel)
        return max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)

    def _record_log(
        self, ref: BuildRef, spec: ClusterBuildSpec, status: BuildStatus, pod: Obj | None
    ) -> None:
        if pod is None or status.logSha256:
            return
        try:
            data = self.kube.pod_log(
                ref.namespace, pod["metadata"]["name"], "build", spec.limits.log
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
        ending: Ending,
        spec: ClusterBuildSpec | None = None,
        seen: ObservationStatus | None = None,
    ) -> float:
        """Judge, record, sign and write the end of a build; teardown comes next."""
        status.completionTime = _now()
        if ending.manifest is not None:
            record_artifacts(status, ending.manifest)
        record = build_record(build, ref, status, ending)
        if spec is not None and seen is not None:
            judge(record, seen, seen.events, seen.actions, spec.observe)
        if record.status is Status.QUARANTINED:
            reasons = record.observation.quarantine_reasons if record.observation else []
            ending = Ending("Quarantined", "Quarantined", "; ".join(reasons))
            status.artifacts, status.digest = [], ""  # withheld, as locally
        # The store's record first: once the status says finished, the record exists.
        if record.status is Status.SUCCEEDED and spec is not None:
            status.provenance = attest(record, spec, self.store, self.store.home, "kubernetes")
        else:
            self.store.save(record)
        self._write_end(build, ref, status, ending)
        self.metrics.builds.labels(tenant=record.tenant, result=record.status.value).inc()
        return 0.0  # teardown next, now that the status is recorded

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


def build_record(build: Obj, ref: BuildRef, status: BuildStatus, ending: Ending) -> BuildRecord:
    """The same record a local build leaves in the store, so ``farm show``, ``farm
    artifacts``, ``farm report`` and ``farm provenance`` work on the controller's store.
    The id is the Build's ``<namespace>.<name>.<uid8>``."""
    spec = build.get("spec") or {}
    tenant = str(spec.get("tenant") or "default")[:63]
    finished = status.completionTime or datetime.now(UTC)
    started = status.startTime or finished
    return BuildRecord(
        id=f"{ref.namespace}.{ref.name}.{names.short_uid(ref.uid)}",
        status=ending.result,
        tenant=tenant,
        image=str(spec.get("image") or ""),
        image_id=ending.image_id,
        runtime=f"kubernetes RuntimeClass {names.RUNTIME_CLASS}",
        spec=spec,
        created_at=started,
        finished_at=finished,
        duration_seconds=(finished - started).total_seconds(),
        exit_code=status.exitCode,
        container_id=status.containerIDs[0] if status.containerIDs else None,
        artifacts=[Artifact(**a.model_dump()) for a in status.artifacts],
        refused=[
            Refusal(path=r.split(": ", 1)[0], reason=r.split(": ", 1)[-1]) for r in status.refused
        ],
        log_sha256=status.logSha256 or None,
        notes=[ending.message],
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def dump(status: BuildStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude_none=True)


def collect_key(ref: BuildRef) -> str:
    return f"{ref.namespace}/{ref.name}/{ref.uid}"


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

"""Reconcile one Build: compare what exists with what should, and take the next step.

Callers: ``farm.k8s.controller`` workers, one key at a time (the work queue guarantees
no two workers hold the same key). Level-triggered: every call re-reads the Build and
its Jobs and pods from the API, so a missed event, a duplicate event or a restarted
controller all converge to the same result. Each step is idempotent: objects have
deterministic names and a 409 on create means "already there". Status is written with
the Build's resourceVersion; a 409 there means someone else wrote first, and the key is
simply reconciled again. Returns the delay after which to look again, or None.

Phases: Pending → Fetching → Building → Collecting → Succeeded | Failed. Status is
recorded *before* teardown, and teardown finishes before ``tornDown`` is set.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import secrets
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
    cluster_spec,
    parse_status,
    set_condition,
)
from farm.k8s.teardown import Teardown
from farm.metrics import Metrics
from farm.store import Store

log = logging.getLogger(__name__)
POLL = 10.0  # seconds: a safety net; watches normally wake the controller sooner


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
            return self._finish(build, ref, status, "Failed", "InvalidSpec", str(exc))
        sandbox = objects.sandbox_spec(ref, spec)
        token = self._ensure_common(ref, spec)
        fetch = self._ensure(objects.fetch_job(ref, spec, sandbox, self.config))
        if status.startTime is None:
            status.startTime = datetime.now(UTC).replace(microsecond=0)
        state, why = job_state(fetch)
        if state == "suspended":
            return self._set(build, ref, status, "Pending", "Queued", "waiting for Kueue")
        if state == "failed":
            return self._finish(build, ref, status, "Failed", "FetchFailed", why)
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
        if exit_code is None:
            if state == "failed":  # deadline or eviction before the build ended
                return self._finish(build, ref, status, "Failed", "BuildTimedOut", why)
            return self._set(build, ref, status, "Building", "Building", "build running")
        status.exitCode = exit_code
        if exit_code != 0:
            self._record_log(ref, spec, status, pod)
            message = f"the build exited with status {exit_code}"
            return self._finish(build, ref, status, "Failed", "BuildFailed", message)
        self._ensure(objects.collect_policy(ref, self.config))
        key = collect_key(ref)
        self.ledger.expect(key, token, spec.limits)
        manifest = self.ledger.result(key)
        if manifest is None:
            if state == "failed" or (state == "succeeded"):
                message = f"the collector ended without delivering a manifest ({why or state})"
                return self._finish(build, ref, status, "Failed", "CollectionFailed", message)
            return self._set(build, ref, status, "Collecting", "Collecting", "uploading /out")
        self._record_log(ref, spec, status, pod)
        record_artifacts(status, manifest)
        message = f"{len(manifest.artifacts)} artifacts, {len(manifest.refused)} refused"
        return self._finish(build, ref, status, "Succeeded", "Succeeded", message)

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
        self, build: Obj, ref: BuildRef, status: BuildStatus, phase: str, reason: str, message: str
    ) -> float:
        status.phase = phase  # type: ignore[assignment]
        status.message = message
        status.observedGeneration = ref.generation
        status.completionTime = datetime.now(UTC).replace(microsecond=0)
        value = "True" if phase == "Succeeded" else "False"
        set_condition(status, "Succeeded", value, reason, message, ref.generation)
        set_condition(status, "TornDown", "False", "Pending", "teardown next", ref.generation)
        self._write(build, status)
        self.kube.event(build, reason, message, warning=phase != "Succeeded")
        result = {"Succeeded": "succeeded", "Failed": "failed"}[phase]
        if reason == "BuildTimedOut":
            result = "timed_out"
        tenant = (build.get("spec") or {}).get("tenant") or "default"
        self.metrics.builds.labels(tenant=str(tenant)[:63], result=result).inc()
        return 0.0  # teardown next, now that the status is recorded

    def _write(self, build: Obj, status: BuildStatus) -> None:
        build.update(self.kube.replace_build_status(build, dump(status)))


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


def build_exit_code(pod: Obj | None) -> int | None:
    """Exit code of the ``build`` init container, None while it has not terminated.
    The kubelet reports it, so the (untrusted) build cannot forge it."""
    for st in ((pod or {}).get("status") or {}).get("initContainerStatuses") or []:
        terminated = (st.get("state") or {}).get("terminated")
        if st.get("name") == "build" and terminated:
            return int(terminated.get("exitCode", 1))
    return None


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

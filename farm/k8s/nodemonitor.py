"""The node monitor: one per node (a DaemonSet), it turns what gVisor saw inside each
build pod into Build status and metrics.

Callers: ``farm node-monitor`` (``farm.k8s.main``). It runs the same observer as a local
build: the DaemonSet's pod runs ``farm.observe``'s daemon on a hostPath socket that
every node's runsc points at (containerd ``runsc.toml`` → ``pod-init-config``, see
docs/kubernetes.md), and reads the build container's own record: a pod is one gVisor
sandbox whose containers share one trace connection, and the spool keeps one record per
container, ended when that container is over (farm.observe.lifecycle). Each scan asks
for it without waiting (``poll``), so no pod holds up another. The container id is the
one the kubelet reports in ``initContainerStatuses[].containerID``
(``containerd://<id>``), the id runsc names the container by. It considers only pods in
the run namespace (where only the Job controller creates pods, for the controller's
Jobs), and the pod's ``farm.dev/build-namespace`` and ``farm.dev/build-name``
annotations name the Build: a pod elsewhere, whatever its labels, is never reported,
and the pod's own namespace is never taken for the Build's.
It learns of its node's build pods by watching them (``farm.k8s.watching``: one paged
list, then a watch from its resourceVersion with the field selector
``spec.nodeName=<node>``, bookmarks, a re-list on 410 and a bounded reconnect backoff),
not by listing them every scan: the API server serves one watch per node instead of a
list per node per second.
Counts go to ``farm_blocked_actions_total`` and into ``Build.status.blocked`` and
``blockedByKind``; the whole classified record goes into ``status.observation`` (for a
check run, those three fields under ``status.checkRuns.<run>``). It is a merge patch of
just those fields, so it never fights the controller's own status writes. The
controller waits for that record before it finishes the build, and judges it by the
Build's observe policy; the monitor applies no policy itself. Each record names the
monitor's node (``nodeName``, from the downward API), and the controller accepts it only
from the node the build pod ran on.

The observer is behind :class:`ObservationSource`, so this module needs nothing from
Docker or from a running gVisor to be tested.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from farm.errors import KubeNotFoundError, KubernetesError
from farm.k8s import names
from farm.k8s.kube import Kube, Obj
from farm.k8s.reconcile import build_container_id, build_exit_code
from farm.k8s.resource import ObservationStatus
from farm.k8s.teardown import MANAGED
from farm.k8s.watching import Informer
from farm.metrics import Metrics
from farm.observe.classify import BlockedAction, iter_actions
from farm.observe.daemon import HostObserver, ObserverDaemon, ObserverPaths
from farm.observe.spool import PRUNE_EVERY, Observation, TraceRecord
from farm.observe.verdict import MAX_LISTED_ACTIONS, MAX_LISTED_BYTES, Tally
from farm.reprocheck import MAX_RUNS

log = logging.getLogger(__name__)


class ObservationSource(Protocol):
    """``farm.observe.daemon.HostObserver`` satisfies this."""

    def poll(self, container_id: str) -> TraceRecord | None: ...

    def collect(self, container_id: str, timeout: float | None = None) -> TraceRecord: ...


#: How long after the kubelet reports the build container terminated the monitor waits
#: for its record to end (the killed children's last events, a slow spool) before it
#: reports the record as it is: incomplete. Asked for on each scan, never waited on.
RECORD_WAIT = 30.0


def observation_status(
    container_id: str,
    seen: Observation,
    actions: Iterable[BlockedAction],
    runs: int = 1,
    node: str = "",
) -> ObservationStatus:
    """What goes into ``status.observation``: the completeness counts and the actions,
    capped in number and bytes (farm.observe.verdict's caps, one for every record).
    Leaving any out makes the record incomplete, so an enforce-mode build cannot hide an
    attempt behind a flood of others. The ``runs`` of a reproducibility check share the
    caps, since all their records are in one Build. ``node`` is the reporting node."""
    counted = Tally(MAX_LISTED_ACTIONS // runs, MAX_LISTED_BYTES // runs).add_all(actions)
    return _status(container_id, seen, counted, node)


def _status(container_id: str, seen: Observation, counted: Tally, node: str) -> ObservationStatus:
    listed = counted.listed()
    unlisted = counted.total - len(listed)
    completeness = seen.completeness()
    if unlisted:
        cap = f"{unlisted} of {counted.total} actions not listed (over the status's cap)"
        completeness["complete"] = False
        completeness["problem"] = "; ".join(p for p in (seen.problem, cap) if p)
    return ObservationStatus(
        containerID=container_id,
        nodeName=node,
        events=seen.count,
        actions=listed,
        unlisted=unlisted,
        **completeness,
    )


class NodeMonitor:
    def __init__(
        self,
        kube: Kube,
        metrics: Metrics,
        source: ObservationSource,
        node_name: str,
        run_namespace: str = names.RUN_NAMESPACE,
        *,
        record_wait: float = RECORD_WAIT,
    ) -> None:
        self.kube, self.metrics, self.source = kube, metrics, source
        self.node_name, self.record_wait = node_name, record_wait
        #: The controller's run namespace (ControllerConfig.run_namespace): the only
        #: one whose pods are build pods.
        self.run_namespace = run_namespace
        #: When each terminated build container's record was first asked for and was
        #: not there yet (monotonic seconds).
        self.waiting: dict[str, float] = {}
        #: Containers already reported; a restarted monitor reports again (status is
        #: set, not added to, so only the Prometheus counter can count twice).
        self.done: set[str] = set()
        #: Status patches collected but not yet written (the API refused the last try).
        self.pending: dict[str, dict[str, Any]] = {}
        #: This node's build pods, kept current by list+watch while ``run`` runs.
        self.pods = Informer(
            functools.partial(kube.core.list_namespaced_pod, run_namespace),
            lambda _pod: None,  # the scan loop reads the cache; a pod needs no wake-up
            label_selector=f"{MANAGED},{names.PHASE_LABEL}=build",
            field_selector=f"spec.nodeName={node_name}",
            kind="Pod",
            page=kube.page,
            max_items=kube.max_list_items,
            metrics=metrics,
        )
        self.watching = False

    def scan(self) -> int:
        """Report every finished build container on this node whose record has ended
        (or waited out ``record_wait``); the rest are asked again on the next scan, so
        no pod holds up another. The pods are the watch's while ``run`` runs; a scan
        called on its own (a one-off, the tests) lists them first."""
        if not self.watching:
            self.pods.relist()
        reported = 0
        for pod in list(self.pods.cache.values()):
            cid = build_container_id(pod)
            if cid and cid not in self.done and build_exit_code(pod) is not None:
                try:
                    reported += self.report(pod, cid)
                except Exception as exc:  # the next pod must not wait on this one
                    log.warning("node monitor: pod %s: %s", pod["metadata"]["name"], exc)
        return reported

    def report(self, pod: Obj, container_id: str) -> bool:
        """Ship the container's record into its Build's status; False (nothing done)
        while the record has not ended and ``record_wait`` has not run out."""
        namespace, build = build_of(pod)
        if container_id not in self.pending:
            trace = self._record(container_id)
            if trace is None:
                return False
            # The observer hands a record out once (reading consumes it), so it is kept
            # until the patch lands: a failed patch must not turn into a missing record.
            self.pending[container_id] = _for_run(pod, self._observe(pod, trace))
        try:
            if build and namespace:
                self.kube.patch_build_status(namespace, build, self.pending[container_id])
        except KubeNotFoundError:
            pass  # the Build was deleted meanwhile: nothing to annotate
        del self.pending[container_id]
        self.done.add(container_id)
        return True

    def _record(self, container_id: str) -> TraceRecord | None:
        """The container's record once it has ended; after ``record_wait`` whatever is
        there, incomplete and saying why; None meanwhile."""
        trace = self.source.poll(container_id)
        if trace is not None:
            self.waiting.pop(container_id, None)
            return trace
        since = self.waiting.setdefault(container_id, time.monotonic())
        if time.monotonic() - since < self.record_wait:
            return None
        del self.waiting[container_id]
        return self.source.collect(container_id, timeout=0)

    def _observe(self, pod: Obj, trace: TraceRecord) -> dict[str, Any]:
        """Classify one container's record, count it, and return the run's status
        fields that carry it."""
        container_id = trace.container_id
        namespace, _ = build_of(pod)
        runs = _runs(pod)
        # No Cargo.lock here (the sources are on the build's volume): a proc macro whose
        # compilation gVisor did not see is named without its version. A stream: the
        # spool may hold millions of events, and only the capped listing is kept.
        share = max(1, runs)
        counted = Tally(MAX_LISTED_ACTIONS // share, MAX_LISTED_BYTES // share)
        counted.add_all(iter_actions(trace.stream(), {}))
        observation = trace.seen()
        kinds = counted.by_kind
        for kind, n in kinds.items():
            self.metrics.blocked_actions.labels(tenant=namespace, kind=kind).inc(n)
        self.metrics.observer_dropped.inc(observation.lost)
        shipped = _status(container_id, observation, counted, self.node_name)
        return {
            "blocked": sum(kinds.values()),
            "blockedByKind": dict(kinds),
            "observation": shipped.model_dump(mode="json", exclude_none=True),
        }

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Watch this node's build pods and scan them every ``interval`` (each scan
        asks only the local observer), until ``stop``."""
        self.watching = True
        self.pods.start(f"pods-{self.node_name}")
        try:
            while not stop.wait(interval):
                if not self.pods.synced.is_set():
                    continue  # no list yet: nothing to scan
                try:
                    self.scan()
                except Exception as exc:  # keep monitoring: a missed scan is retried next tick
                    quiet = isinstance(exc, KubernetesError)
                    log.warning("node monitor: %s", exc, exc_info=not quiet)
        finally:
            self.pods.stop()
            self.watching = False


def serve(
    kube: Kube,
    metrics: Metrics,
    paths: ObserverPaths,
    node_name: str,
    stop: threading.Event,
    *,
    run_namespace: str = names.RUN_NAMESPACE,
    interval: float = 1.0,
    prune_every: float = PRUNE_EVERY,
) -> None:
    """The node monitor's process (``farm node-monitor``): the observer daemon on
    ``paths`` (it prunes its spool while it serves) and the scan loop, until ``stop``.
    Leaving stops the daemon, whose records of sandboxes still running are then
    incomplete: a restart or rollout never passes for a clean build."""
    with ObserverDaemon(paths, prune_every=prune_every):
        monitor = NodeMonitor(kube, metrics, HostObserver(paths), node_name, run_namespace)
        monitor.run(stop, interval)


def build_of(pod: Obj) -> tuple[str, str]:
    """(namespace, name) of the Build a build pod is for, from the controller's
    annotations ("" where missing); never the pod's own namespace, the run namespace."""
    notes = pod["metadata"].get("annotations") or {}
    return (
        str(notes.get(names.BUILD_NAMESPACE_ANNOTATION) or ""),
        str(notes.get(names.BUILD_NAME_ANNOTATION) or ""),
    )


def _runs(pod: Obj) -> int:
    """How many check runs share the status budget (the controller's pod annotation),
    read defensively: a bad value counts as the most runs, the smallest share."""
    raw = (pod["metadata"].get("annotations") or {}).get(names.RUNS_ANNOTATION, "1")
    try:
        return min(max(int(raw), 1), MAX_RUNS)
    except ValueError:
        return MAX_RUNS


def _for_run(pod: Obj, fields: dict[str, Any]) -> dict[str, Any]:
    """The status patch placing a run's fields: at the top for run 0 (the build), under
    ``checkRuns.<k>`` for a check run (a merge patch of a map key leaves other runs be)."""
    run = (pod["metadata"].get("labels") or {}).get(names.RUN_LABEL, "0")
    return fields if run == "0" else {"checkRuns": {run: fields}}

"""The controller process: leader election, informers, the work queue and workers.

Callers: ``farm controller`` (``farm.cli``) and the k8s tests, which run two of these
against one fake API server. Only the Lease holder reconciles: on becoming leader it
reaps orphans, starts list+watch of Builds (in every namespace) and of the Jobs and
pods it made (in the run namespace only; any change of one queues the key of the Build
its annotations name), and starts workers. The reaper pass also expires finished
Builds past the operator's TTL or history limit (``farm.k8s.expiry``). ``stop`` is graceful:
informers stop, workers finish the Build in hand, then the Lease is released.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import defaultdict
from datetime import datetime

from farm.errors import FarmError
from farm.k8s import names
from farm.k8s.artifacts import Ledger
from farm.k8s.config import ControllerConfig
from farm.k8s.expiry import Retention, sweep
from farm.k8s.kube import Kube, Obj
from farm.k8s.leader import DEFAULT_LEASE, LeaderElector, LeaseTiming
from farm.k8s.reconcile import Reconciler
from farm.k8s.teardown import MANAGED
from farm.k8s.watching import Informer
from farm.k8s.workqueue import WorkQueue
from farm.metrics import Metrics
from farm.store import Store

log = logging.getLogger(__name__)
LEASE_NAME = "farm-controller"


class Controller:
    def __init__(
        self,
        kube: Kube,
        config: ControllerConfig,
        store: Store,
        metrics: Metrics,
        identity: str,
        *,
        workers: int = 2,
        watch_timeout: int = 60,
        lease: LeaseTiming = DEFAULT_LEASE,
        reap_seconds: float = 300.0,
    ) -> None:
        self.kube, self.config, self.metrics = kube, config, metrics
        self.queue = WorkQueue()
        self.ledger = Ledger(store, on_finish=self._collected)
        self.reconciler = Reconciler(kube, config, self.ledger, store, metrics)
        self.elector = LeaderElector(
            kube,
            config.namespace,
            LEASE_NAME,
            identity,
            lease,
        )
        self.workers = workers
        self.watch_timeout = watch_timeout
        self.reap_seconds = reap_seconds
        self.informers: list[Informer] = []
        self._threads: list[threading.Thread] = []
        self._failures: dict[str, int] = defaultdict(int)
        self._stopping = threading.Event()

    # --- event handlers: they only queue keys -------------------------------------------
    def _on_build(self, obj: Obj) -> None:
        meta = obj["metadata"]
        self.queue.add(f"{meta['namespace']}/{meta['name']}")

    def _on_owned(self, obj: Obj) -> None:
        # The Build's namespace is the annotation's: the object's own is the run namespace.
        notes = obj["metadata"].get("annotations") or {}
        build = notes.get(names.BUILD_NAME_ANNOTATION)
        namespace = notes.get(names.BUILD_NAMESPACE_ANNOTATION)
        if build and namespace:
            self.queue.add(f"{namespace}/{build}")

    def _collected(self, key: str) -> None:
        namespace, name, _ = key.split("/", 2)
        self.queue.add(f"{namespace}/{name}")

    # --- lifecycle ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set or leadership is lost; always shut down cleanly."""
        try:
            self.elector.run(stop, on_started=self._start)
        finally:
            self._shutdown()

    def _start(self) -> None:
        try:
            self.reap()
        except FarmError as exc:  # the periodic reaper tries again later
            log.warning("orphan reaper: %s", exc)
        k = self.kube
        # Builds: any tenant may create them, so past max_builds the informer keeps a fair
        # share and syncs rather than failing; Jobs and pods are the controller's own.
        lists = {
            names.KIND: (
                functools.partial(
                    k.custom.list_cluster_custom_object, names.GROUP, names.VERSION, names.PLURAL
                ),
                None,
                self._on_build,
                self.config.max_builds,
            ),
            "Job": (
                functools.partial(k.batch.list_namespaced_job, self.config.run_namespace),
                MANAGED,
                self._on_owned,
                None,
            ),
            "Pod": (
                functools.partial(k.core.list_namespaced_pod, self.config.run_namespace),
                MANAGED,
                self._on_owned,
                None,
            ),
        }
        for kind, (fn, selector, handler, bound) in lists.items():
            informer = Informer(
                fn,
                handler,
                label_selector=selector,
                watch_timeout=self.watch_timeout,
                kind=kind,
                page=k.page,
                max_items=k.max_list_items if bound is None else bound,
                metrics=self.metrics,
                keep=bound is not None,
            )
            self.informers.append(informer.start(kind.lower()))
        for i in range(self.workers):
            self._spawn(self._work, f"worker-{i}")
        self._spawn(self._reap_loop, "reaper")

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _shutdown(self) -> None:
        self._stopping.set()
        for informer in self.informers:
            informer.request_stop()
        for informer in self.informers:
            informer.stop()
        self.queue.shutdown()
        for thread in self._threads:
            thread.join(30)
        self.elector.release()

    # --- work -------------------------------------------------------------------------
    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            delay = self._reconcile_one(key)
            self.queue.done(key)
            if delay is not None and not self._stopping.is_set():
                self.queue.add_after(key, delay)

    def _reconcile_one(self, key: str) -> float | None:
        namespace, name = key.split("/", 1)
        try:
            delay = self.reconciler.reconcile(namespace, name)
        except Exception as exc:
            # Any error, a bug included, backs this key off: one Build (or hostile input
            # in it) must never end a worker and so stall every other Build.
            self._failures[key] += 1
            delay = min(60.0, 0.5 * 2 ** self._failures[key])
            unexpected = not isinstance(exc, FarmError | OSError)
            log.warning(
                "reconcile %s failed (%s); retrying in %.1fs", key, exc, delay, exc_info=unexpected
            )
            return delay
        self._failures.pop(key, None)
        return delay

    def reap(self) -> int:
        """Delete leftovers (in the run namespace) of Builds that no longer exist, in
        whichever namespace they were: the build label is the Build's uid. Past
        ``max_builds`` the list fails and nothing is reaped: a Build left out of a
        trimmed list would be judged gone and its live Job deleted."""
        live = {
            b["metadata"]["uid"]: bool((b.get("status") or {}).get("tornDown"))
            for b in self.kube.list_builds(self.config.max_builds)
        }
        return self.reconciler.teardown.reap(self.config.run_namespace, live)

    def expire(self, now: datetime | None = None) -> int:
        """Delete finished Builds past the TTL or history limit (farm.k8s.expiry)."""
        keep = Retention(self.config.build_ttl_seconds, self.config.build_history_limit)
        store, bound = self.reconciler.store, self.config.max_builds
        return sweep(self.kube, store, keep, self.metrics, now, max_builds=bound)

    def _reap_loop(self) -> None:
        while not self._stopping.wait(self.reap_seconds):
            for name, task in (("orphan reaper", self.reap), ("build expiry", self.expire)):
                try:
                    task()
                except FarmError as exc:
                    log.warning("%s: %s", name, exc)

"""Leader election on a ``coordination.k8s.io/v1`` Lease, so only one controller acts.

Callers: ``farm.k8s.controller`` runs :meth:`LeaderElector.run` before any reconcile.
The algorithm is client-go's: a candidate takes the Lease when it is absent, released,
or not renewed for ``lease_seconds`` *as observed by this process's own monotonic
clock* (so clock skew between nodes cannot make two leaders); every write carries the
Lease's resourceVersion, so two candidates racing get one 200 and one 409. The leader
renews every ``retry_seconds``; if it cannot renew within ``renew_deadline`` it stops
leading (and the controller exits, to be restarted as a candidate). On graceful
shutdown it releases the Lease so a successor does not wait out the lease.

Why not ``kubernetes.leaderelection``: it has no release on shutdown and no stop hook.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from farm.errors import ConflictError, KubeNotFoundError, KubernetesError
from farm.k8s.kube import Kube

log = logging.getLogger(__name__)


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseTiming:
    """client-go's defaults; tests shrink them to keep handovers quick."""

    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry_seconds: float = 2.0


DEFAULT_LEASE = LeaseTiming()


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = DEFAULT_LEASE,
    ) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.timing = timing
        self._observed: tuple[Any, float] = (None, 0.0)
        self.leading = threading.Event()

    def _expired(self, spec: dict[str, Any]) -> bool:
        record = (spec.get("holderIdentity"), spec.get("renewTime"))
        if record != self._observed[0]:
            self._observed = (record, time.monotonic())
        return time.monotonic() - self._observed[1] > self.timing.lease_seconds

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards."""
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
        except KubeNotFoundError:
            return self._create()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder not in ("", self.identity) and not self._expired(spec):
            return False
        now = _micro_now()
        new = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_seconds)),
            "renewTime": now,
        }
        if holder != self.identity:
            new["acquireTime"] = now
            new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        try:
            self.kube.replace_lease(self.namespace, {**lease, "spec": new})
        except ConflictError:
            return False
        return True

    def lease_body(self) -> dict[str, Any]:
        """A new Lease held by this candidate."""
        now = _micro_now()
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.timing.lease_seconds)),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }

    def _create(self) -> bool:
        try:
            self.kube.create_lease(self.namespace, self.lease_body())
        except ConflictError:
            return False
        return True

    def release(self) -> None:
        """Give the Lease up if this candidate holds it (graceful shutdown)."""
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            spec = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
            self.kube.replace_lease(self.namespace, {**lease, "spec": spec})
        except KubernetesError as exc:
            log.warning("could not release the Lease: %s", exc)
        finally:
            self.leading.clear()

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except KubernetesError as exc:
            log.warning("leader election: %s", exc)
            return False

    def run(self, stop: threading.Event, on_started: Callable[[], None]) -> None:
        """Block until leading, call ``on_started``, renew until ``stop`` or loss."""
        while not stop.is_set() and not self._attempt():
            stop.wait(self.timing.retry_seconds)
        if stop.is_set():
            return
        self.leading.set()
        log.info("%s is the leader", self.identity)
        on_started()
        last_renew = time.monotonic()
        while not stop.wait(self.timing.retry_seconds):
            if self._attempt():
                last_renew = time.monotonic()
            elif time.monotonic() - last_renew > self.timing.renew_deadline:
                log.error("lost the Lease; stopping")
                self.leading.clear()
                return

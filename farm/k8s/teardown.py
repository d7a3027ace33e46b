"""Delete everything the controller created for one Build, and reap orphans.

Callers: ``farm.k8s.reconcile`` (after a Build's status is recorded, and from the
finalizer when a Build is deleted) and ``farm.k8s.controller`` (the orphan reaper at
startup and periodically). Objects are found by the uid-qualified build label, not by
name, so a partial create or a renamed object cannot escape. Deletes use foreground
propagation, so a Job is gone only after its pods are.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

from farm.errors import KubeNotFoundError
from farm.k8s import names
from farm.k8s.kube import OWNED_KINDS, Kube, Obj
from farm.metrics import Metrics

MANAGED = f"app.kubernetes.io/managed-by={names.MANAGED_BY}"


def selector(short_uid: str) -> str:
    return f"{MANAGED},{names.BUILD_LABEL}={short_uid}"


class Teardown:
    def __init__(self, kube: Kube, metrics: Metrics) -> None:
        self.kube = kube
        self.metrics = metrics
        #: When teardown of each build began, for farm_teardown_seconds, and the pods
        #: seen meanwhile (most go with their Job, by foreground propagation).
        self._started: dict[str, float] = {}
        self._pods: dict[str, set[str]] = defaultdict(set)

    def remaining(self, namespace: str, short_uid: str) -> list[Obj]:
        sel = selector(short_uid)
        return [o for kind in (*OWNED_KINDS, "Pod") for o in self._list(kind, namespace, sel)]

    def _list(self, kind: str, namespace: str, sel: str) -> list[Obj]:
        return [{**o, "kind": kind} for o in self.kube.list(kind, namespace, sel)]

    def step(self, namespace: str, short_uid: str) -> bool:
        """Delete what is left; True once nothing of this build remains."""
        key = f"{namespace}/{short_uid}"
        self._started.setdefault(key, time.monotonic())
        left = self.remaining(namespace, short_uid)
        self._pods[key].update(o["metadata"]["name"] for o in left if o["kind"] == "Pod")
        if not left:
            self.metrics.teardown.observe(time.monotonic() - self._started.pop(key))
            self.metrics.pods_torn_down.inc(len(self._pods.pop(key, ())))
            return True
        for obj in left:
            if obj["metadata"].get("deletionTimestamp"):
                continue  # already going (foreground: waiting for its dependents)
            with contextlib.suppress(KubeNotFoundError):
                self.kube.delete(obj["kind"], namespace, obj["metadata"]["name"])
        return False

    def reap(self, live_builds: dict[str, str]) -> int:
        """Delete objects whose Build is gone. ``live_builds``: ``ns/short_uid`` -> phase
        of every existing Build. Returns how many builds' leftovers were reaped; sets
        farm_sandboxes_leaked to the number of build pods whose Build has finished."""
        groups: dict[str, list[Obj]] = defaultdict(list)
        leaked = 0
        for kind in (*OWNED_KINDS, "Pod"):
            for obj in self._list(kind, None, MANAGED):
                meta = obj["metadata"]
                key = f"{meta['namespace']}/{meta.get('labels', {}).get(names.BUILD_LABEL, '')}"
                groups[key].append(obj)
                if kind == "Pod" and live_builds.get(key) in ("Succeeded", "Failed"):
                    leaked += 1
        self.metrics.sandboxes_leaked.set(leaked)
        orphans = [key for key in groups if key not in live_builds]
        for key in orphans:
            namespace, short = key.split("/", 1)
            self.step(namespace, short)
            self.metrics.reaped.inc()
        return len(orphans)

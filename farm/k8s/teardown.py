"""Delete everything the controller created for one Build, and reap orphans.

Callers: ``farm.k8s.reconcile`` (after a Build's status is recorded, and from the
finalizer when a Build is deleted) and ``farm.k8s.controller`` (the orphan reaper at
startup and periodically). Objects are found by the build label (the Build's uid), not
by name, so a partial create or a renamed object cannot escape. They are all in the run
namespace, whatever namespace their Build is in, and carry no ownerReference to it (one
across namespaces is invalid), so this and the finalizer are the only teardown; the
uid, unique cluster-wide, maps a leftover back to its Build. Deletes use foreground
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


def selector(uid: str) -> str:
    return f"{MANAGED},{names.BUILD_LABEL}={uid}"


class Teardown:
    def __init__(self, kube: Kube, metrics: Metrics) -> None:
        self.kube = kube
        self.metrics = metrics
        #: When teardown of each build began, for farm_teardown_seconds, and the pods
        #: seen meanwhile (most go with their Job, by foreground propagation).
        self._started: dict[str, float] = {}
        self._pods: dict[str, set[str]] = defaultdict(set)

    def remaining(self, namespace: str, uid: str) -> list[Obj]:
        """What is left of the Build with ``uid`` in ``namespace`` (the run namespace)."""
        sel = selector(uid)
        return [o for kind in (*OWNED_KINDS, "Pod") for o in self._list(kind, namespace, sel)]

    def _list(self, kind: str, namespace: str, sel: str) -> list[Obj]:
        return [{**o, "kind": kind} for o in self.kube.list(kind, namespace, sel)]

    def step(self, namespace: str, uid: str) -> bool:
        """Delete what is left; True once nothing of this build remains."""
        key = f"{namespace}/{uid}"
        self._started.setdefault(key, time.monotonic())
        left = self.remaining(namespace, uid)
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

    def reap(self, namespace: str, live_builds: dict[str, bool]) -> int:
        """Delete objects in ``namespace`` (the run namespace) whose Build is gone.
        ``live_builds``: the uid of every Build, in any namespace -> whether it is
        recorded as torn down. Returns how many builds' leftovers were reaped; sets
        farm_sandboxes_leaked to the pods still there after teardown."""
        groups: dict[str, list[Obj]] = defaultdict(list)
        leaked = 0
        for kind in (*OWNED_KINDS, "Pod"):
            for obj in self._list(kind, namespace, MANAGED):
                uid = (obj["metadata"].get("labels") or {}).get(names.BUILD_LABEL, "")
                groups[uid].append(obj)
                if kind == "Pod" and live_builds.get(uid):
                    leaked += 1
        self.metrics.sandboxes_leaked.set(leaked)
        orphans = [uid for uid in groups if uid not in live_builds]
        for uid in orphans:
            # One step issues every delete; foreground deletions may finish later, and
            # the next reaper pass sees what remains.
            self.step(namespace, uid)
            self.metrics.reaped.inc()
        return len(orphans)

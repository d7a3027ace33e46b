"""The fetch Job runs once per Build (issue 13, item 4). It has
``ttlSecondsAfterFinished``, so Kubernetes deletes it an hour after it finished, while
the build may still run; the controller must not take its absence for "not fetched yet"
and fetch again under the running build. Against the fake API over real HTTP."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from farm.k8s.artifacts import Ledger
from farm.k8s.config import ControllerConfig
from farm.k8s.reconcile import Reconciler
from farm.metrics import Metrics
from farm.store import Store
from tests.k8s.conftest import NS, RUN_NS, Cluster
from tests.k8s.kubelet import build_manifest, finish_job, job
from tests.k8s.test_status_and_monitor import settle


def test_a_fetch_job_deleted_by_its_ttl_is_not_made_again(cluster: Cluster, tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    config = ControllerConfig()
    cluster.service(config, 8443)  # the build Job's collector address
    r = Reconciler(cluster.kube, config, Ledger(store), store, Metrics(CollectorRegistry()))
    build = cluster.api.create("builds", NS, build_manifest("once"))
    settle(r, "once")
    fetch = job(cluster.api, RUN_NS, build, "fetch")
    assert fetch["spec"]["ttlSecondsAfterFinished"] > 0  # why this test exists
    finish_job(cluster.api, RUN_NS, fetch)
    settle(r, "once")
    status = cluster.api.get("builds", NS, "once")["status"]
    assert status["fetchTime"] and status["phase"] == "Building", status
    assert job(cluster.api, RUN_NS, build, "build")

    cluster.api.delete("jobs", RUN_NS, fetch["metadata"]["name"])  # what the TTL controller does
    for _ in range(3):
        settle(r, "once")
    fetches = [n for p, ns, n in cluster.api.created if p == "jobs" and n.endswith("-fetch")]
    assert fetches == [fetch["metadata"]["name"]]
    assert cluster.api.get("builds", NS, "once")["status"]["phase"] == "Building"

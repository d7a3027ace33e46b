"""The node monitor reads the build container's own record out of a pod's shared trace
connection, as soon as the build container is over, while the pod's sandbox (pause,
collector) runs on; and it never waits on one pod's record inside a scan.

A real observer daemon on private paths and a fake runsc peer sending gVisor's wire
format for a pod (tests/unit/test_observe_pod.py has the datagrams;
tests/e2e/test_observe_pod.py runs real runsc).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from farm.k8s.nodemonitor import NodeMonitor
from farm.metrics import Metrics
from farm.observe.daemon import HostObserver, ObserverDaemon, ObserverPaths
from tests.k8s.conftest import NS, RUN_NS, Cluster
from tests.k8s.kubelet import BUILD_CID, build_manifest, build_pod, finish_job, job
from tests.k8s.test_status_and_monitor import reconciler, settle
from tests.unit.test_observe_pod import exit_, opened, start
from tests.unit.test_observe_sink import peer

PAUSE_CID, COLLECTOR_CID = "0a" * 32, "c0" * 32


@pytest.fixture
def paths() -> Iterator[ObserverPaths]:
    with tempfile.TemporaryDirectory(prefix="farm-mpod-") as d:
        yield ObserverPaths(socket=Path(d) / "observer.sock", spool=Path(d) / "spool")


def terminated_build_pod(cluster: Cluster, tmp_path: Path, name: str) -> None:
    r = reconciler(cluster, tmp_path)
    build = cluster.api.create("builds", NS, build_manifest(name))
    settle(r, name)
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    settle(r, name)
    build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=0)


def test_the_build_record_is_reported_while_the_pod_sandbox_runs_on(
    cluster: Cluster, tmp_path: Path, paths: ObserverPaths
) -> None:
    terminated_build_pod(cluster, tmp_path, "pod-shared")
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        pod.send(start(PAUSE_CID, 1))  # the pause comes first, as under the shim
        pod.send(start(BUILD_CID, 2))
        pod.send(opened(BUILD_CID, 2, "/root/.ssh/id_rsa"))
        monitor = NodeMonitor(
            cluster.kube, Metrics(CollectorRegistry()), HostObserver(paths), "node-1"
        )
        began = time.monotonic()
        assert monitor.scan() == 0  # the build's init has not exited: ask again later
        assert time.monotonic() - began < 5  # and no 30 s wait inside the scan
        pod.send(exit_(BUILD_CID, 2))
        pod.send(start(COLLECTOR_CID, 3))
        pod.send(opened(COLLECTOR_CID, 3, "/etc/shadow"))  # not the build's
        deadline = time.monotonic() + 10
        while not monitor.scan():
            assert time.monotonic() < deadline, "the build's record was never reported"
            time.sleep(0.05)
        shipped = cluster.api.get("builds", NS, "pod-shared")["status"]["observation"]
    assert shipped["containerID"] == BUILD_CID and shipped["complete"] is True
    assert [a["target"] for a in shipped["actions"]] == ["/root/.ssh/id_rsa"]


def test_a_record_that_never_ends_is_reported_incomplete_after_the_wait(
    cluster: Cluster, tmp_path: Path, paths: ObserverPaths
) -> None:
    terminated_build_pod(cluster, tmp_path, "pod-stuck")
    with ObserverDaemon(paths), peer(paths.socket) as pod:
        pod.recv(100)
        pod.send(start(BUILD_CID, 2))  # and no exit, ever
        source = HostObserver(paths)
        monitor = NodeMonitor(
            cluster.kube, Metrics(CollectorRegistry()), source, "node-1", record_wait=0.3
        )
        assert monitor.scan() == 0
        time.sleep(0.4)
        assert monitor.scan() == 1
        shipped = cluster.api.get("builds", NS, "pod-stuck")["status"]["observation"]
    assert shipped["complete"] is False and "still open" in shipped["problem"]

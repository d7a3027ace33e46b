"""Fixtures for the k8s tests: a fake API server over real HTTP, the real ``kubernetes``
client pointed at it, and controllers with short lease and watch timings."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from farm.k8s import permissions
from farm.k8s.artifacts import ArtifactServer
from farm.k8s.config import ControllerConfig
from farm.k8s.controller import Controller
from farm.k8s.kube import Kube
from farm.k8s.leader import LeaseTiming
from farm.k8s.nodemonitor import NodeMonitor
from farm.metrics import Metrics
from farm.observe.spool import Observation
from farm.store import Store
from tests.k8s.fakeapi import FakeAPI, FakeServer
from tests.k8s.kubelet import BUILD_CID, Spooled, wait_for

NS = "team-a"
#: Where the controller creates every Build's objects (ControllerConfig.run_namespace).
RUN_NS = "farm-builds"


@dataclass
class Cluster:
    api: FakeAPI
    server: FakeServer
    kube: Kube
    tmp: Path
    controllers: list[tuple[Controller, threading.Event, threading.Thread, ArtifactServer]] = field(
        default_factory=list
    )
    monitors: list[tuple[threading.Event, threading.Thread]] = field(default_factory=list)

    def controller(
        self, identity: str, config: ControllerConfig | None = None, **kwargs: object
    ) -> Controller:
        """Start a controller candidate (with its own store and artifact endpoint)."""
        store = Store(self.tmp / f"home-{identity}")
        ctl = Controller(
            self.kube,
            config or ControllerConfig(),
            store,
            Metrics(CollectorRegistry()),
            identity,
            workers=2,
            watch_timeout=2,
            lease=LeaseTiming(lease_seconds=1.0, renew_deadline=0.8, retry_seconds=0.1),
            **kwargs,  # type: ignore[arg-type]
        )
        artifacts = ArtifactServer(ctl.ledger, "127.0.0.1", 0, ready=ctl.elector.leading.is_set)
        artifacts.start()
        self.service(ctl.config, artifacts.server_address[1])
        stop = threading.Event()
        thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
        thread.start()
        self.controllers.append((ctl, stop, thread, artifacts))
        return ctl

    def service(self, config: ControllerConfig, port: int, cluster_ip: str = "127.0.0.1") -> None:
        """The chart's controller Service as the API server holds it: the controller
        looks up its ClusterIP (farm.k8s.endpoint). Here the "ClusterIP" is loopback and
        its ``artifacts`` port the first controller's own server (a real Service keeps
        its address and routes to whichever controller leads)."""
        if any(
            s["metadata"]["name"] == config.artifact_service
            for s in self.api.list("services", config.namespace)
        ):
            return
        self.api.create("services", config.namespace, service(config, port, cluster_ip))

    def monitor(self, observations: dict[str, Observation] | None = None) -> NodeMonitor:
        """Run the real node monitor of node-1 (where tests/k8s/kubelet.py puts pods).
        By default the build container's record is complete and clean."""
        seen = observations if observations is not None else {BUILD_CID: clean()}
        monitor = NodeMonitor(self.kube, Metrics(CollectorRegistry()), Spooled(seen), "node-1")
        stop = threading.Event()
        thread = threading.Thread(target=monitor.run, args=(stop, 0.05), daemon=True)
        thread.start()
        self.monitors.append((stop, thread))
        return monitor

    def artifact_url(self, ctl: Controller) -> str:
        return next(a.url for c, _, _, a in self.controllers if c is ctl)

    def stop(self, ctl: Controller, crash: bool = False) -> None:
        """Graceful stop, or a crash: the process vanishes without releasing its Lease."""
        for c, stop, thread, artifacts in self.controllers:
            if c is ctl:
                if crash:
                    c.elector.release = lambda: None  # type: ignore[method-assign]
                stop.set()
                thread.join(30)
                artifacts.stop()

    def wait_phase(self, name: str, phase: str) -> dict:
        return wait_for(
            lambda: (
                (b := self.api.get("builds", NS, name)).get("status", {}).get("phase") == phase
                and b
            ),
            f"Build {name} to reach {phase}",
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    api = FakeAPI()
    server = api.serve()
    kube = Kube(client.ApiClient(client.Configuration(host=server.url)), request_timeout=10)
    c = Cluster(api, server, kube, tmp_path)
    yield c
    for stop, thread in c.monitors:
        stop.set()
        thread.join(30)
    for _, stop, _, _ in c.controllers:
        stop.set()
    for _, _, thread, artifacts in c.controllers:
        thread.join(30)
        if artifacts.socket.fileno() != -1:
            artifacts.stop()
    server.close()
    configs = [ctl.config for ctl, _, _, _ in c.controllers] or [ControllerConfig()]
    for config in configs:
        assert_within_rbac(api.rbac_calls, config)


Call = tuple[str, str, str, str | None, str | None]


def assert_within_rbac(calls: list[Call], config: ControllerConfig) -> None:
    """Every call farm/k8s made to the fake API server is one farm/k8s/permissions.py
    lists for where it was made: cluster-wide grants anywhere, the controller's Roles
    in its namespace, the run namespace's Roles there only. So the chart (tested equal
    to that table) grants enough, and a call into a tenant's namespace for anything
    but Builds and Events fails here."""
    anywhere = permissions.CONTROLLER + permissions.NODE_MONITOR
    scoped = {
        config.namespace: permissions.LEADER_ELECTION + permissions.ARTIFACT_SERVICE_READ,
        config.run_namespace: permissions.RUN_OBJECTS + permissions.NODE_MONITOR_PODS,
    }
    outside = [call for call in calls if not granted(call, anywhere, scoped)]
    assert outside == [], "calls the RBAC in farm/k8s/permissions.py does not grant"


def granted(call: Call, anywhere: tuple[permissions.Grant, ...], scoped: dict[str, tuple]) -> bool:
    """Whether ``call`` is within a cluster-wide grant, or a grant of its namespace."""
    grants = permissions.flatten(anywhere)
    if call[4] is not None:
        grants |= permissions.flatten(scoped.get(call[4], ()))
    return any(
        (group, resource, verb) == call[:3] and (not names or call[3] in names)
        for group, resource, verb, names in grants
    )


def service(config: ControllerConfig, port: int, cluster_ip: str) -> dict:
    """A Service named and shaped as helm/farm/templates/service.yaml's controller Service."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": config.artifact_service, "namespace": config.namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "selector": dict(config.controller_labels),
            "ports": [
                {"name": "artifacts", "port": port, "targetPort": "artifacts", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def clean(container_id: str = BUILD_CID) -> Observation:
    """gVisor's complete record of a build container that tried nothing."""
    return Observation(container_id=container_id, connections=1)


BuildFactory = Callable[..., dict]

"""Fixtures for the k8s tests: a fake API server over real HTTP, the real ``kubernetes``
client pointed at it, and controllers with short lease and watch timings."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from prometheus_client import CollectorRegistry

from farm import devapiserver
from farm.k8s import names, permissions
from farm.k8s.artifacts import ArtifactServer
from farm.k8s.config import ControllerConfig
from farm.k8s.controller import Controller
from farm.k8s.kube import Kube
from farm.k8s.leader import LeaseTiming
from farm.k8s.nodemonitor import NodeMonitor
from farm.metrics import Metrics
from farm.observe.spool import Observation
from farm.store import Store
from tests.k8s import realapi
from tests.k8s.fakeapi import FakeAPI, FakeServer
from tests.k8s.kubelet import BUILD_CID, Spooled, wait_for
from tests.k8s.realapi import Etcd, RealServer
from tests.k8s.realpki import Credentials, client_credentials
from tests.k8s.router import Router

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
        self,
        identity: str,
        config: ControllerConfig | None = None,
        home: str | None = None,
        **kwargs: object,
    ) -> Controller:
        """Start a controller candidate (with its own store and artifact endpoint, or
        the store of controller ``home``: the same volume, after a restart)."""
        store = Store(self.tmp / f"home-{home or identity}")
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


# --- the real custom-resource API server (tests/k8s/realapi.py) ---------------------------
CRD_PATH = Path(__file__).resolve().parents[2] / "manifests" / "crd" / "builds.farm.dev.yaml"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture(scope="session")
def real_binaries() -> tuple[Path, Path]:
    """(apiextensions-apiserver, etcd) as `make apiserver` builds them; skip without."""
    found = devapiserver.binaries()
    if found is None:
        pytest.skip(
            f"the real API server is not built in {devapiserver.DEST}: run `make apiserver`"
        )
    return found


@pytest.fixture(scope="session")
def real_etcd(
    real_binaries: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Etcd]:
    work = tmp_path_factory.mktemp("etcd")
    etcd = realapi.start_etcd(real_binaries[1], work / "data", work / "etcd.log")
    yield etcd
    realapi.stop(etcd.process)


@pytest.fixture(scope="session")
def real_pki(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return client_credentials(tmp_path_factory.mktemp("pki"))


def _real_server(
    binaries: tuple[Path, Path], etcd: Etcd, creds: Credentials, work: Path, *flags: str
) -> Iterator[RealServer]:
    server = realapi.start_apiserver(binaries[0], etcd, work, creds, *flags)
    try:
        yield server
    finally:
        realapi.stop(server.process)


@pytest.fixture(scope="session")
def real_api(
    real_binaries: tuple[Path, Path],
    real_etcd: Etcd,
    real_pki: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealServer]:
    """The real server with its watch cache (as on every cluster), the generated CRD
    installed and established."""
    work = tmp_path_factory.mktemp("apiserver")
    for server in _real_server(real_binaries, real_etcd, real_pki, work):
        code, body = server.request("POST", CRDS, yaml.safe_load(CRD_PATH.read_text()))
        assert code == 201, body
        wait_served(server)
        yield server


@pytest.fixture(scope="session")
def real_api_uncached(
    real_api: RealServer,
    real_binaries: tuple[Path, Path],
    real_etcd: Etcd,
    real_pki: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealServer]:
    """A second server on the same etcd without the watch cache: its watches read etcd
    directly, so an etcd compaction is what makes a resourceVersion too old."""
    work = tmp_path_factory.mktemp("apiserver-uncached")
    for server in _real_server(real_binaries, real_etcd, real_pki, work, "--watch-cache=false"):
        wait_served(server)
        yield server


def wait_served(server: RealServer) -> None:
    """Until the Build CRD is Established and its group version answers."""

    def served() -> bool:
        code, crd = server.request("GET", f"{CRDS}/{names.CRD_NAME}")
        conditions = {
            c["type"]: c["status"]
            for c in ((crd or {}).get("status") or {}).get("conditions") or []
        }
        found, _ = server.request("GET", f"/apis/{names.API_VERSION}")
        return code == 200 and conditions.get("Established") == "True" and found == 200

    wait_for(served, "the Build CRD to be served", timeout=120)


@dataclass
class Routed:
    """One address in front of the real server (Builds) and the fake (built-in kinds)."""

    real: RealServer
    api: FakeAPI
    fake: FakeServer
    router: Router
    kube: Kube
    namespace: str

    def build_path(self, name: str = "", sub: str = "") -> str:
        path = f"/apis/{names.API_VERSION}/namespaces/{self.namespace}/{names.PLURAL}"
        return "/".join(p for p in (path, name, sub) if p)


def _routed(real: RealServer) -> Iterator[Routed]:
    api = FakeAPI()
    fake = api.serve()
    router = Router(real, fake.url, api)
    kube = Kube(client.ApiClient(client.Configuration(host=router.url)), request_timeout=10)
    # A namespace per test: this server runs without NamespaceLifecycle, so none is created.
    routed = Routed(real, api, fake, router, kube, f"t-{uuid.uuid4().hex[:10]}")
    yield routed
    router.close()
    fake.close()
    _remove_builds(routed)
    assert_within_rbac(api.rbac_calls, ControllerConfig())


def _remove_builds(routed: Routed) -> None:
    """The session's server outlives the test: leave no Build (and so nothing for a
    later test's controller, which watches every namespace, to reconcile)."""
    code, found = routed.real.request("GET", routed.build_path())
    assert code == 200, found
    merge = {"Content-Type": "application/merge-patch+json"}
    for item in found["items"]:
        path = routed.build_path(item["metadata"]["name"])
        routed.real.request("PATCH", path, {"metadata": {"finalizers": None}}, merge)
        routed.real.request("DELETE", path)


@pytest.fixture
def routed(real_api: RealServer) -> Iterator[Routed]:
    yield from _routed(real_api)


@pytest.fixture
def routed_uncached(real_api_uncached: RealServer) -> Iterator[Routed]:
    yield from _routed(real_api_uncached)

"""The Backend protocol on a cluster: listing and tearing down sandboxes over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from farm.backends.kubernetes import KubernetesBackend
from farm.errors import InputError
from farm.k8s import objects
from farm.k8s.config import ControllerConfig
from farm.k8s.objects import BuildRef
from farm.k8s.resource import cluster_spec
from farm.metrics import Metrics
from farm.policy import BuildDirs, sandbox_for
from farm.settings import Settings
from farm.spec import BuildSpec
from tests.k8s.conftest import NS, RUN_NS, Cluster

#: The controller Service's ClusterIP and artifacts port (farm.k8s.endpoint).
URL = "http://10.96.0.10:8443"


def test_leftovers_are_listed_by_build_and_torn_down(cluster: Cluster) -> None:
    ref = BuildRef(NS, "app", "uid-1")
    spec = cluster_spec({"source": {"git": "https://git.test/a.git", "revision": "a" * 40}})
    cluster.api.create(
        "jobs",
        RUN_NS,
        objects.build_job(
            ref, spec, objects.sandbox_spec(ref, spec), ControllerConfig(), artifact_url=URL
        ),
    )
    cluster.api.create("networkpolicies", RUN_NS, objects.build_policy(ref))
    backend = KubernetesBackend(cluster.kube, Metrics(CollectorRegistry()))
    sandbox = f"{RUN_NS}/uid-1"
    assert backend.list_sandboxes() == {sandbox: "app"}
    assert sorted(backend.teardown(sandbox)) == [
        f"Job/{ref.object_name('build')}",
        f"NetworkPolicy/{ref.object_name('build')}",
    ]
    assert backend.list_sandboxes() == {}
    assert backend.teardown(sandbox) == []  # idempotent


def test_running_a_local_sandbox_is_refused_before_anything_is_created(
    cluster: Cluster, tmp_path: Path
) -> None:
    spec = sandbox_for(
        BuildSpec(source=tmp_path, argv=["true"]),
        "b1",
        BuildDirs(tmp_path),
        Settings(home=tmp_path),
    )
    backend = KubernetesBackend(cluster.kube, Metrics(CollectorRegistry()))
    with pytest.raises(InputError, match="submit a Build resource"):
        backend.run(spec, log=lambda _: None, on_created=lambda _: None)
    assert not [r for r in cluster.api.requests if r[0] != "GET"]

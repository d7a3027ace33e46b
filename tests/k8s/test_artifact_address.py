"""The collector reaches the controller with no DNS: it is given the controller Service's
ClusterIP (farm.k8s.endpoint), and its collect NetworkPolicy opens nothing but the
controller pods' artifact port (docs/kubernetes.md, "Why a ClusterIP and not DNS")."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from farm.errors import ArtifactServiceError
from farm.k8s import names, objects
from farm.k8s.config import ControllerConfig
from farm.k8s.endpoint import upload_url
from farm.k8s.objects import BuildRef
from tests.k8s.conftest import NS, RUN_NS, Cluster, service
from tests.k8s.kubelet import (
    build_manifest,
    build_pod,
    finish_job,
    job,
    run_collector,
    sandbox_tree,
    wait_for,
)

CONFIG = ControllerConfig()
REF = BuildRef(NS, "app", "uid-1")


def collector_env(job: dict) -> dict[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def reason(build: dict) -> str:
    conditions = (build.get("status") or {}).get("conditions") or []
    return next((c["reason"] for c in conditions if c["type"] == "Succeeded"), "")


def test_the_collect_policy_opens_only_the_controller_pods_artifact_port() -> None:
    """No DNS (port 53), no ipBlock, no other peer or port, no ingress: the collector is
    given an IP literal, and the policy is evaluated after kube-proxy's DNAT of the
    ClusterIP to a controller pod, which this one rule allows."""
    config = CONFIG.model_copy(update={"artifact_port": 9443})
    for run in (0, 2):
        spec = objects.collect_policy(REF, config, run)["spec"]
        assert spec == {
            "podSelector": {"matchLabels": REF.run_labels(run)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "farm-system"}
                            },
                            "podSelector": {"matchLabels": dict(config.controller_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 9443}],
                }
            ],
        }
        text = json.dumps(spec)
        assert "53" not in text and "ipBlock" not in text and "kube-dns" not in text


def test_the_upload_url_is_the_cluster_ip_and_the_artifacts_port() -> None:
    v4 = service(CONFIG, 8443, "10.96.12.34")
    assert upload_url(v4) == "http://10.96.12.34:8443"
    v6 = service(CONFIG, 8443, "fd00:10:96::1")
    assert upload_url(v6) == "http://[fd00:10:96::1]:8443"
    assert urlsplit(upload_url(v6)).port == 8443


@pytest.mark.parametrize(
    ("cluster_ip", "ports", "problem"),
    [
        ("None", None, "headless"),
        ("", None, "no ClusterIP"),
        ("10.96.0.1", [{"name": "metrics", "port": 9090}], "no port named artifacts"),
    ],
)
def test_a_service_without_an_address_to_upload_to_is_an_error(
    cluster_ip: str, ports: list | None, problem: str
) -> None:
    svc = service(CONFIG, 8443, cluster_ip)
    if ports is not None:
        svc["spec"]["ports"] = ports
    with pytest.raises(ArtifactServiceError, match=problem):
        upload_url(svc)


def test_the_collector_uploads_to_the_services_cluster_ip_never_a_name(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The Service (as the chart makes it) is looked up through the API; its ClusterIP
    (loopback here) and artifacts port are what the collector gets and uploads to."""
    ctl = cluster.controller("a")
    cluster.monitor()
    port = urlsplit(cluster.artifact_url(ctl)).port
    builds, jobs = [], []
    for name in ("one", "two"):  # one after the other: two workers could both miss the cache
        builds.append(build := cluster.api.create("builds", NS, build_manifest(name)))
        finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
        jobs.append(job(cluster.api, RUN_NS, build, "build"))
    for built in jobs:
        url = collector_env(built)["FARM_ARTIFACT_URL"]
        assert url == f"http://127.0.0.1:{port}"
        ipaddress.ip_address(urlsplit(url).hostname or "")  # a literal, not a name
    # Looked up once, then reused (farm.k8s.endpoint.CACHE_SECONDS).
    gets = [r for r in cluster.api.requests if r[1].endswith(f"/services/{names.ARTIFACT_SERVICE}")]
    assert len(gets) == 1

    build_pod(cluster.api, RUN_NS, jobs[0], exit_code=0)
    cluster.wait_phase("one", "Collecting")
    root = sandbox_tree(tmp_path / "pod", {"app": b"built"})
    assert run_collector(cluster.api, RUN_NS, builds[0], root) == 0  # the Job's own URL
    done = cluster.wait_phase("one", "Succeeded")
    assert [a["path"] for a in done["status"]["artifacts"]] == ["out/app"]


def test_without_the_service_the_build_waits_and_creates_no_build_job(
    cluster: Cluster,
) -> None:
    """A missing Service is the install's problem, not the build's: the Build waits with
    reason ArtifactServiceMissing (nothing untrusted has run) and goes on once it exists."""
    ctl = cluster.controller("a")
    cluster.api.delete("services", CONFIG.namespace, CONFIG.artifact_service)
    build = cluster.api.create("builds", NS, build_manifest("waits"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    waiting = wait_for(
        lambda: (
            reason(b := cluster.api.get("builds", NS, "waits")) == "ArtifactServiceMissing" and b
        ),
        "the Build to wait for the Service",
    )
    assert "farm-system/farm-controller" in waiting["status"]["message"]
    assert "does not exist" in waiting["status"]["message"]
    assert not [
        j for j in cluster.api.list("jobs", RUN_NS) if j["metadata"]["name"].endswith("-build")
    ]

    port = urlsplit(cluster.artifact_url(ctl)).port or 0
    cluster.service(CONFIG, port)
    # A Build event wakes the controller now rather than at its next poll.
    cluster.api.mutate("builds", NS, "waits", lambda b: b["metadata"].setdefault("labels", {}))
    built = job(cluster.api, RUN_NS, build, "build")
    assert collector_env(built)["FARM_ARTIFACT_URL"] == f"http://127.0.0.1:{port}"

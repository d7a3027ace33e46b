"""resources.disk in the cluster: the build pod's volumes and ephemeral-storage follow
it, and the CRD accepts it in the same shape as memory."""

from __future__ import annotations

import jsonschema
import pytest

from farm.k8s import crd, objects
from farm.k8s.config import ControllerConfig
from farm.k8s.objects import BuildRef
from farm.k8s.resource import cluster_spec
from tests.k8s.conftest import NS, RUN_NS, Cluster
from tests.k8s.kubelet import build_manifest, build_pod, finish_job, job

#: The controller Service's ClusterIP and artifacts port (farm.k8s.endpoint).
URL = "http://10.96.0.10:8443"

REF = BuildRef("team-a", "app", "uid-1")
SOURCE = {"git": "https://git.test/a.git", "revision": "a" * 40}


def pod_spec(resources: dict) -> dict:
    spec = cluster_spec({"source": SOURCE, "resources": resources})
    job = objects.build_job(
        REF, spec, objects.sandbox_spec(REF, spec), ControllerConfig(), artifact_url=URL
    )
    return job["spec"]["template"]["spec"]


def test_volumes_and_ephemeral_storage_follow_resources_disk() -> None:
    pod = pod_spec({"disk": "1g", "scratch": "64m"})
    sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}
    assert sizes["target"] == sizes["out"] == str(1 << 30)
    assert sizes["tmp"] == str(64 << 20)
    build = pod["initContainers"][0]["resources"]
    # /tmp is a disk-backed emptyDir in the cluster, so it counts on the node's disk too.
    want = str((1 << 30) + (64 << 20))
    assert build["requests"]["ephemeral-storage"] == build["limits"]["ephemeral-storage"] == want
    collector = pod["containers"][0]["resources"]
    assert collector["limits"]["ephemeral-storage"] == str(objects.COLLECTOR_STORAGE)
    assert int(sizes["collector-tmp"]) < objects.COLLECTOR_STORAGE


def test_the_default_cap_is_the_local_default() -> None:
    pod = pod_spec({})
    sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}
    assert sizes["target"] == sizes["out"] == str(10 << 30)


def _resources_schema() -> dict:
    version = crd.crd()["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["resources"]


def test_the_crd_takes_disk_like_memory() -> None:
    props = _resources_schema()["properties"]
    assert set(props["disk"]) == set(props["memory"]) | {"description"}
    assert props["disk"]["x-kubernetes-int-or-string"] is True
    assert (props["disk"]["minimum"], props["disk"]["maximum"]) == (64 << 20, 1 << 40)


@pytest.mark.parametrize(("value", "ok"), [("1g", True), (1 << 30, True), (1 << 20, False)])
def test_the_crd_schema_checks_disk(value: object, ok: bool) -> None:
    schema = {"type": "object", "properties": {"disk": _resources_schema()["properties"]["disk"]}}
    if ok:
        jsonschema.validate({"disk": value}, schema)
    else:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"disk": value}, schema)


#: The kubelet's eviction messages (pkg/kubelet/eviction/helpers.go).
POD_LIMIT = "Pod ephemeral local storage usage exceeds the total limit of containers 1088Mi. "
EMPTY_DIR = 'Usage of EmptyDir volume "out" exceeds the limit "1Gi". '
NODE_PRESSURE = "The node was low on resource: ephemeral-storage. "


def evict(api, build: dict, message: str) -> None:
    pod = build_pod(api, RUN_NS, job(api, RUN_NS, build, "build"), exit_code=137)
    status = {**pod["status"], "phase": "Failed", "reason": "Evicted", "message": message}
    api.mutate("pods", RUN_NS, pod["metadata"]["name"], lambda o: o.update(status=status))


@pytest.mark.parametrize("message", [POD_LIMIT, EMPTY_DIR])
def test_a_pod_evicted_past_its_disk_cap_fails_with_the_disk_note(
    cluster: Cluster, message: str
) -> None:
    cluster.controller("a")
    cluster.monitor()
    build = cluster.api.create("builds", NS, build_manifest("full", resources={"disk": "1g"}))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    evict(cluster.api, build, message)
    failed = cluster.wait_phase("full", "Failed")
    assert failed["status"]["message"] == f"disk limit 1g reached: {message.strip()}"
    conditions = {c["type"]: c for c in failed["status"]["conditions"]}
    assert conditions["Succeeded"]["reason"] == "DiskLimitReached"


def test_node_pressure_is_not_blamed_on_the_builds_cap(cluster: Cluster) -> None:
    cluster.controller("a")
    cluster.monitor()
    build = cluster.api.create("builds", NS, build_manifest("pressed"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    evict(cluster.api, build, NODE_PRESSURE)
    failed = cluster.wait_phase("pressed", "Failed")
    assert "disk limit" not in failed["status"]["message"]

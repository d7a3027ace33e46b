"""resources.disk in the cluster: the build pod's volumes and ephemeral-storage follow
it, and the CRD accepts it in the same shape as memory."""

from __future__ import annotations

import jsonschema
import pytest

from farm.k8s import crd, objects
from farm.k8s.config import ControllerConfig
from farm.k8s.objects import BuildRef
from farm.k8s.resource import cluster_spec

REF = BuildRef("team-a", "app", "uid-1")
SOURCE = {"git": "https://git.test/a.git", "revision": "a" * 40}


def build_pod(resources: dict) -> dict:
    spec = cluster_spec({"source": SOURCE, "resources": resources})
    job = objects.build_job(REF, spec, objects.sandbox_spec(REF, spec), ControllerConfig())
    return job["spec"]["template"]["spec"]


def test_volumes_and_ephemeral_storage_follow_resources_disk() -> None:
    pod = build_pod({"disk": "1g", "scratch": "64m"})
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
    pod = build_pod({})
    sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}
    assert sizes["target"] == sizes["out"] == str(10 << 30)


def _resources_schema() -> dict:
    version = crd.crd()["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["resources"]


def test_the_crd_takes_disk_like_memory() -> None:
    props = _resources_schema()["properties"]
    assert set(props["disk"]) == set(props["memory"]) | {"description"}
    assert props["disk"]["x-kubernetes-int-or-string"] is True
    ints = props["disk"]["anyOf"][0]
    assert (ints["minimum"], ints["maximum"]) == (64 << 20, 1 << 40)


@pytest.mark.parametrize(("value", "ok"), [("1g", True), (1 << 30, True), (1 << 20, False)])
def test_the_crd_schema_checks_disk(value: object, ok: bool) -> None:
    schema = {"type": "object", "properties": {"disk": _resources_schema()["properties"]["disk"]}}
    if ok:
        jsonschema.validate({"disk": value}, schema)
    else:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"disk": value}, schema)

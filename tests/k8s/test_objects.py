"""The security properties of the pods the controller creates, read off the objects."""

from __future__ import annotations

import pytest

from farm import reprocheck
from farm.k8s import names, objects
from farm.k8s.config import ControllerConfig
from farm.k8s.objects import BuildRef
from farm.k8s.resource import cluster_spec
from farm.settings import SANDBOX_UID

#: The controller Service's ClusterIP and artifacts port (farm.k8s.endpoint).
URL = "http://10.96.0.10:8443"

REF = BuildRef("team-a", "app", "uid-1")
SPEC = cluster_spec(
    {
        "source": {"git": "https://git.test/a.git", "revision": "a" * 40},
        "timeout_seconds": 600,
        "resources": {"cpus": 2, "memory": "2g", "scratch": "256m"},
    }
)
SANDBOX = objects.sandbox_spec(REF, SPEC)
CONFIG = ControllerConfig()
BUILD = objects.build_job(REF, SPEC, SANDBOX, CONFIG, artifact_url=URL)
POD = BUILD["spec"]["template"]["spec"]
BUILD_CONTAINER = POD["initContainers"][0]
COLLECTOR = POD["containers"][0]


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def test_the_build_runs_under_gvisor_as_a_fixed_non_root_user_with_nothing_to_escalate() -> None:
    assert POD["runtimeClassName"] == "gvisor"
    assert POD["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": SANDBOX_UID,
        "runAsGroup": SANDBOX_UID,
        "fsGroup": SANDBOX_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sec = BUILD_CONTAINER["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert sec["capabilities"] == {"drop": ["ALL"]} and not sec["privileged"]


def test_the_build_holds_no_credential() -> None:
    assert POD["automountServiceAccountToken"] is False
    assert POD["serviceAccountName"] == REF.object_name("sandbox")
    assert objects.service_account(REF)["automountServiceAccountToken"] is False
    assert POD["enableServiceLinks"] is False  # no Service addresses in the environment
    # The collector's token is a volume of the pod but is mounted only into the collector.
    assert objects.TOKEN_DIR not in mounts(BUILD_CONTAINER)
    assert mounts(COLLECTOR)[objects.TOKEN_DIR]["readOnly"] is True
    assert COLLECTOR["securityContext"]["runAsUser"] == names.COLLECTOR_UID != SANDBOX_UID
    assert not any("TOKEN" in e["name"] and "FILE" not in e["name"] for e in BUILD_CONTAINER["env"])


def test_sources_are_read_only_and_only_target_out_tmp_are_writable_and_sized() -> None:
    m = mounts(BUILD_CONTAINER)
    writable = sorted(p for p, v in m.items() if not v.get("readOnly"))
    assert writable == ["/build/target", "/out", "/tmp"]
    assert m["/src"]["readOnly"] and m["/vendor"]["readOnly"]
    sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in POD["volumes"] if "emptyDir" in v}
    assert sizes["tmp"] == str(256 << 20)
    assert sizes["out"] == sizes["target"] == str(SPEC.resources.disk) == str(10 << 30)
    # The collector reads the build's outputs but cannot change them.
    assert all(mounts(COLLECTOR)[p]["readOnly"] for p in ("/src", "/build/target", "/out"))


def test_the_environment_and_limits_are_the_local_policys() -> None:
    env = {e["name"]: e["value"] for e in BUILD_CONTAINER["env"]}
    assert env == SANDBOX.env and env["CARGO_HOME"] == "/tmp/cargo-home"
    assert BUILD_CONTAINER["command"] == ["cargo", "build", "--release", "--locked", "--offline"]
    limits = BUILD_CONTAINER["resources"]["limits"]
    # ephemeral-storage: target/ and /out (resources.disk) plus /tmp, disk-backed here.
    storage = str((10 << 30) + (256 << 20))
    assert limits == {"cpu": "2000m", "memory": str(2 << 30), "ephemeral-storage": storage}
    assert BUILD_CONTAINER["resources"]["requests"] == limits
    spec = BUILD["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 600 + CONFIG.collect_grace_seconds
    assert spec["ttlSecondsAfterFinished"] == CONFIG.ttl_seconds_after_finished


def test_the_build_pod_is_denied_all_traffic_and_fetch_reaches_only_mirrors_and_dns() -> None:
    deny = objects.build_policy(REF)["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert deny["ingress"] == [] and deny["egress"] == []
    assert deny["podSelector"]["matchLabels"].items() <= POD_LABELS.items()
    config = ControllerConfig(mirrors=[{"cidr": "10.9.0.0/16", "ports": [443]}])  # type: ignore[list-item]
    fetch = objects.fetch_policy(REF, config)["spec"]
    peers = [peer for rule in fetch["egress"] for peer in rule["to"]]
    assert {"ipBlock": {"cidr": "10.9.0.0/16"}} in peers
    assert all("ipBlock" not in p or p["ipBlock"]["cidr"] == "10.9.0.0/16" for p in peers)
    assert fetch["ingress"] == []


POD_LABELS = BUILD["spec"]["template"]["metadata"]["labels"]


def test_names_are_deterministic_dns_labels_and_uid_qualified() -> None:
    long = BuildRef("ns", "b" * 250, "uid-1")
    for role in ("fetch", "build", "collector", "sandbox", "src"):
        name = long.object_name(role)
        assert len(name) <= 63 and name == long.object_name(role)
    assert BuildRef("ns", "app", "uid-2").object_name("build") != REF.object_name("build")


def selects(policy: dict, job: dict) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"].items()
    return wanted <= job["spec"]["template"]["metadata"]["labels"].items()


def test_each_check_run_is_its_own_varied_pod_and_only_its_collect_window_opens() -> None:
    spec = SPEC.model_copy(update={"check": 3})
    runs = [
        objects.build_job(REF, spec, SANDBOX, CONFIG, k, "node-7", artifact_url=URL)
        for k in range(3)
    ]
    names_ = [j["metadata"]["name"] for j in runs]
    assert names_ == [REF.object_name(r) for r in ("build", "build-1", "build-2")]
    deny = objects.build_policy(REF)
    for k, job in enumerate(runs):
        # The deny-all policy covers every run; a run's collect policy only that run,
        # so opening run 0's window never gives a still-running run 1 the network.
        assert selects(deny, job)
        collect = objects.collect_policy(REF, CONFIG, k)
        assert [selects(collect, other) for other in runs] == [i == k for i in range(3)]
        pod = job["spec"]["template"]["spec"]
        assert pod["volumes"][-1]["secret"]["secretName"] == REF.object_name(
            names.run_role("collector", k)
        )
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert env["FARM_BUILD"] == REF.upload_key(k)
    assert len({REF.upload_key(k) for k in range(3)}) == 3
    # The runs share the ReadWriteOnce sources volume: runs 1.. go to run 0's node.
    assert "affinity" not in runs[0]["spec"]["template"]["spec"]
    for job in runs[1:]:
        # By node name: pod affinity to run 0 would stop matching once run 0 has ended.
        [term] = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert term == {
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-7"]}]
        }
    with pytest.raises(ValueError, match="run 0's node"):
        objects.build_job(REF, spec, SANDBOX, CONFIG, 1, artifact_url=URL)

    varied = reprocheck.variation(1)(SANDBOX)  # type: ignore[misc]
    pod = objects.build_job(REF, spec, varied, CONFIG, 1, "node-7", artifact_url=URL)["spec"][
        "template"
    ]["spec"]
    build_env = [(e["name"], e["value"]) for e in pod["initContainers"][0]["env"]]
    assert build_env == list(varied.env.items()) != list(SANDBOX.env.items())
    assert pod["hostname"] == "farm-check-1" != SANDBOX.hostname
    assert ("CARGO_BUILD_JOBS", "1") in build_env


def test_a_disrupted_pod_is_replaced_but_any_other_failure_ends_the_job() -> None:
    """Eviction, preemption or a drain (DisruptionTarget) is not the build's failure."""
    fetch = objects.fetch_job(REF, SPEC, SANDBOX, CONFIG)
    for job in (fetch, BUILD):
        assert job["spec"]["backoffLimit"] == 0
        assert job["spec"]["podFailurePolicy"] == {
            "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
        }

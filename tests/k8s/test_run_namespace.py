"""Tenants who may edit their own namespace cannot tamper with a build: every Build's
Jobs, pods, sources volume, token Secrets, policies and accounts are in the controller's
run namespace, and nothing a tenant creates in its own namespace is ever taken for them
(docs/kubernetes.md, "Where a Build's objects live"; docs/sandbox.md, "Cluster: tenants
who can edit their namespace"). Each attack below is what a user with `edit` in the
Build's namespace could do when the objects lived there."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

from prometheus_client import CollectorRegistry

from farm.errors import KubernetesError
from farm.k8s import names
from farm.k8s.nodemonitor import NodeMonitor
from farm.metrics import Metrics
from tests.k8s.conftest import NS, RUN_NS, Cluster, clean
from tests.k8s.kubelet import (
    BUILD_CID,
    Spooled,
    build_manifest,
    build_pod,
    finish_job,
    job,
    owned,
    run_collector,
    sandbox_tree,
    wait_for,
)

OWNED = ("jobs", "pods", "secrets", "persistentvolumeclaims", "networkpolicies", "serviceaccounts")


def forged_build_pod(cluster: Cluster, ns: str, real: dict, exit_code: int, cid: str) -> dict:
    """A tenant's copy of ``real`` (a build pod) in ``ns``: the same labels (the Job
    controller's too), annotations and owner reference, a terminated ``build`` container
    with the exit code the tenant wants, and a log of its choosing."""
    meta = real["metadata"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": meta["name"],
            "labels": dict(meta["labels"]),
            "annotations": dict(meta["annotations"]),
            "ownerReferences": copy.deepcopy(meta["ownerReferences"]),
        },
        "spec": copy.deepcopy(real["spec"]),
        "status": copy.deepcopy(real["status"]),
    }
    build = pod["status"]["initContainerStatuses"][0]
    build["state"] = {"terminated": {"exitCode": exit_code}}
    build["containerID"] = f"containerd://{cid}"
    cluster.api.pod_logs[(ns, meta["name"], "build")] = b"all good, trust me\n"
    return cluster.api.create("pods", ns, pod)


def test_a_tenant_pod_labelled_as_the_build_pod_is_never_the_build_pod(cluster: Cluster) -> None:
    """The exit code, log and node come from the Job's own pod, found by the Job's uid
    in the run namespace, never from a pod a tenant made with the same labels, whether
    in its namespace or carrying the Job controller's label and owner reference too."""
    ctl = cluster.controller("a")
    cluster.monitor()
    build = cluster.api.create("builds", NS, build_manifest("target"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_job = job(cluster.api, RUN_NS, build, "build")
    real = build_pod(cluster.api, RUN_NS, build_job, exit_code=None)
    # Labels, the Job controller's uid label and the owner reference, all copied.
    forged_build_pod(cluster, NS, real, exit_code=0, cid="ee" * 32)
    assert {names.JOB_UID_LABEL, names.RUN_LABEL} <= set(real["metadata"]["labels"])

    build_pod(cluster.api, RUN_NS, build_job, exit_code=101, log=b"error[E0425]\n")
    failed = cluster.wait_phase("target", "Failed")
    assert failed["status"]["exitCode"] == 101
    assert failed["status"]["containerIDs"] == ["ab" * 32, "cd" * 32]
    log = ctl.reconciler.store.blob_path(failed["status"]["logSha256"]).read_bytes()
    assert log == b"error[E0425]\n"


def test_a_planted_secret_and_volume_in_the_tenant_namespace_are_never_used(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A tenant knows its Build's name and uid, so it can create the token Secret and
    the sources volume under the names the controller will use, before the controller
    gets to it. Those are in the tenant's namespace; the controller's are in the run
    namespace, with a token of its own, and the planted token uploads nothing."""
    build = cluster.api.create("builds", NS, build_manifest("planted"))
    meta = build["metadata"]
    collector = names.object_name(meta["name"], meta["uid"], "collector")
    src = names.object_name(meta["name"], meta["uid"], "src")
    labels = names.labels(meta["name"], meta["uid"])
    planted = base64.b64encode(b"the-tenants-token").decode()
    for plural, body in (
        ("secrets", {"kind": "Secret", "type": "Opaque", "data": {"token": planted}}),
        (
            "persistentvolumeclaims",
            {"kind": "PersistentVolumeClaim", "spec": {"accessModes": ["ReadWriteOnce"]}},
        ),
    ):
        name = collector if plural == "secrets" else src
        body = {"apiVersion": "v1", "metadata": {"name": name, "labels": labels}, **body}
        cluster.api.create(plural, NS, body)

    cluster.controller("a")
    cluster.monitor()
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_job = job(cluster.api, RUN_NS, build, "build")
    volumes = {v["name"]: v for v in build_job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["collector-token"]["secret"]["secretName"] == collector
    assert volumes["src"]["persistentVolumeClaim"]["claimName"] == src
    # Names resolve in the pod's namespace: the run namespace's objects, the controller's.
    mine = cluster.api.get("secrets", RUN_NS, collector)["data"]["token"]
    assert mine != planted
    assert cluster.api.get("persistentvolumeclaims", RUN_NS, src)["metadata"]["uid"]

    build_pod(cluster.api, RUN_NS, build_job, exit_code=0)
    cluster.wait_phase("planted", "Collecting")
    root = sandbox_tree(tmp_path / "pod", {"app": b"the tenant's binary"})
    assert (
        run_collector(cluster.api, RUN_NS, build, root, token=b"the-tenants-token", deadline=1) != 0
    )
    assert cluster.api.get("builds", NS, "planted")["status"]["phase"] == "Collecting"
    root = sandbox_tree(tmp_path / "real", {"app": b"built"})
    assert run_collector(cluster.api, RUN_NS, build, root) == 0
    done = cluster.wait_phase("planted", "Succeeded")
    assert [a["path"] for a in done["status"]["artifacts"]] == ["out/app"]
    # The tenant's own objects are the tenant's: neither used nor touched.
    assert cluster.api.get("secrets", NS, collector)["data"]["token"] == planted


def test_builds_of_one_name_in_two_namespaces_get_distinct_objects(cluster: Cluster) -> None:
    """One run namespace for every Build: names carry the uid, annotations the Build's
    namespace, and one Build's progress or teardown never touches the other's."""
    cluster.controller("a")
    a = cluster.api.create("builds", NS, build_manifest("app"))
    b = cluster.api.create("builds", "team-b", build_manifest("app"))
    fetch_a, fetch_b = (job(cluster.api, RUN_NS, x, "fetch") for x in (a, b))
    wait_for(lambda: all(owned(cluster.api, RUN_NS, x, "secrets") for x in (a, b)), "tokens")
    objects_of = {
        ns: {
            (p, o["metadata"]["name"])
            for p in OWNED
            for o in owned(cluster.api, RUN_NS, x, p)
            if o["metadata"]["annotations"][names.BUILD_NAMESPACE_ANNOTATION] == ns
        }
        for ns, x in ((NS, a), ("team-b", b))
    }
    assert len(objects_of[NS]) == len(objects_of["team-b"]) == 6  # job, SA, PVC, 2 policies, token
    assert not objects_of[NS] & objects_of["team-b"]
    assert fetch_a["metadata"]["name"] != fetch_b["metadata"]["name"]

    finish_job(cluster.api, RUN_NS, fetch_a)
    cluster.wait_phase("app", "Building")  # NS's
    assert cluster.api.get("builds", "team-b", "app")["status"]["phase"] == "Fetching"
    cluster.api.delete("builds", NS, "app")
    wait_for(lambda: not owned(cluster.api, RUN_NS, a, "secrets"), "teardown of team-a's app")
    left = {(p, o["metadata"]["name"]) for p in OWNED for o in owned(cluster.api, RUN_NS, b, p)}
    assert left == objects_of["team-b"]


def test_the_node_monitor_reports_only_pods_of_the_run_namespace(cluster: Cluster) -> None:
    """A tenant's pod on a gVisor node, labelled and annotated as a build pod of its own
    (or another team's) Build, with a terminated build container whose record is clean:
    the monitor never reports it, so no one can launder a Build's record. A build pod in
    the run namespace is reported to the Build its annotations name, in that namespace."""
    cluster.controller("a")
    victim = cluster.api.create("builds", "team-b", build_manifest("victim"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, victim, "fetch"))
    real = build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, victim, "build"), None)
    forged = forged_build_pod(cluster, NS, real, exit_code=0, cid="ee" * 32)
    mine = copy.deepcopy(forged)
    mine["metadata"]["name"] = "mine"
    notes = mine["metadata"]["annotations"]
    notes[names.BUILD_NAMESPACE_ANNOTATION] = NS  # a Build of the tenant's own
    cluster.api.create("builds", NS, build_manifest("victim"))
    cluster.api.create("pods", NS, mine)

    source = Spooled({"ee" * 32: clean("ee" * 32), BUILD_CID: clean()})
    monitor = NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-1")
    assert monitor.scan() == 0 and source.asked == []
    for ns in (NS, "team-b"):
        assert "observation" not in (cluster.api.get("builds", ns, "victim").get("status") or {})

    build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, victim, "build"), exit_code=0)
    assert monitor.scan() == 1 and source.asked == [BUILD_CID]
    seen = cluster.api.get("builds", "team-b", "victim")["status"]["observation"]
    assert seen["containerID"] == BUILD_CID
    assert "observation" not in (cluster.api.get("builds", NS, "victim").get("status") or {})


def test_an_object_of_the_name_but_another_builds_uid_is_not_adopted(
    cluster: Cluster, tmp_path: Path
) -> None:
    """In the run namespace an existing object of the expected name is adopted (the
    controller's own, from before a restart), but only if its uid label is this
    Build's: two Builds whose names and 8-hex uid hashes collide get an error, never
    one token Secret for both."""
    from tests.k8s.test_status_and_monitor import reconciler

    r = reconciler(cluster, tmp_path)
    build = cluster.api.create("builds", NS, build_manifest("clash"))
    meta = build["metadata"]
    other = names.labels("clash", "another-builds-uid")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names.object_name("clash", meta["uid"], "collector"), "labels": other},
        "data": {"token": base64.b64encode(b"someone else's").decode()},
    }
    cluster.api.create("secrets", RUN_NS, secret)
    for _ in range(3):  # the finalizer first, then the step that needs the token
        try:
            r.reconcile(NS, "clash")
        except KubernetesError as exc:
            assert "exists for another Build (uid another-builds-uid)" in str(exc)
            break
    else:
        raise AssertionError("the other Build's Secret was adopted")
    assert not cluster.api.list("jobs", RUN_NS)

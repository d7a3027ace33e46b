"""The controller against the fake API over real HTTP, driven by the real client:
a full build, a failed one, a deleted one, a crash and restart, an expired watch and
a leader handover. The test plays the kubelet (tests/k8s/kubelet.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from farm.k8s import names, objects
from farm.k8s.objects import BuildRef
from tests.k8s.conftest import NS, RUN_NS, Cluster
from tests.k8s.kubelet import (
    build_manifest,
    build_pod,
    finish_job,
    job,
    owned,
    run_collector,
    sandbox_tree,
    symlink,
    wait_for,
)

OWNED = ("jobs", "pods", "secrets", "persistentvolumeclaims", "networkpolicies", "serviceaccounts")


def leftovers(c: Cluster, build: dict) -> dict[str, list[str]]:
    found = {p: [o["metadata"]["name"] for o in owned(c.api, RUN_NS, build, p)] for p in OWNED}
    return {p: n for p, n in found.items() if n}


def reasons(c: Cluster, build: dict) -> list[str]:
    uid = build["metadata"]["uid"]
    return [e["reason"] for e in c.api.list("events", NS) if e["involvedObject"]["uid"] == uid]


def test_a_build_runs_both_phases_collects_and_tears_down(cluster: Cluster, tmp_path: Path) -> None:
    ctl = cluster.controller("a")
    cluster.monitor()
    build = cluster.api.create("builds", NS, build_manifest("hello"))

    fetching = cluster.wait_phase("hello", "Fetching")
    assert names.FINALIZER in fetching["metadata"]["finalizers"]
    policies = {
        p["metadata"]["name"]: p for p in owned(cluster.api, RUN_NS, build, "networkpolicies")
    }
    assert sorted(policies) == [
        f"hello-{names.short_uid(build['metadata']['uid'])}-{r}" for r in ("build", "fetch")
    ]
    # The deny-all policy exists before the build Job does.
    assert not owned(cluster.api, RUN_NS, build, "jobs")[0]["metadata"]["name"].endswith("-build")
    # In the run namespace, none in the Build's; no ownerReference (one across
    # namespaces is invalid): annotations name the Build.
    for obj in (o for p in OWNED for o in owned(cluster.api, RUN_NS, build, p)):
        assert "ownerReferences" not in obj["metadata"]
        assert obj["metadata"]["annotations"] == {
            names.BUILD_NAME_ANNOTATION: "hello",
            names.BUILD_NAMESPACE_ANNOTATION: NS,
        }
    assert not [c for c in cluster.api.created if c[1] == NS and c[0] not in ("builds", "events")]

    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_job = job(cluster.api, RUN_NS, build, "build")
    cluster.wait_phase("hello", "Building")
    assert not any(
        p.endswith("-collect")
        for p in (
            o["metadata"]["name"] for o in owned(cluster.api, RUN_NS, build, "networkpolicies")
        )
    )

    build_pod(cluster.api, RUN_NS, build_job, exit_code=0, log=b"Compiling hello v0.1.0\n")
    cluster.wait_phase("hello", "Collecting")
    root = sandbox_tree(tmp_path / "pod", {"hello": b"\x7fELF binary", "docs/readme.txt": b"hi"})
    symlink(root, "steal", "/etc/shadow")
    assert run_collector(cluster.api, RUN_NS, build, root) == 0

    done = cluster.wait_phase("hello", "Succeeded")
    status = done["status"]
    assert {a["path"]: a["sha256"] for a in status["artifacts"]} == {
        "out/docs/readme.txt": hashlib.sha256(b"hi").hexdigest(),
        "out/hello": hashlib.sha256(b"\x7fELF binary").hexdigest(),
    }
    assert status["refused"] == ["out/steal: symlink: farm never follows links out of a build"]
    assert status["digest"].startswith("sha256:") and status["exitCode"] == 0
    assert (
        ctl.reconciler.store.blob_path(status["logSha256"]).read_bytes()
        == b"Compiling hello v0.1.0\n"
    )
    assert status["containerIDs"] == ["ab" * 32, "cd" * 32]
    # The same record a local build leaves, in the controller's store.
    record = ctl.reconciler.store.get(f"{NS}.hello.{names.short_uid(build['metadata']['uid'])}")
    assert record.status == "succeeded" and record.log_sha256 == status["logSha256"]
    assert {a.path for a in record.artifacts} == {"out/docs/readme.txt", "out/hello"}
    assert record.observation.complete and record.observation.quarantine_reasons == []
    assert status["provenance"] == record.provenance_sha256

    torn = wait_for(
        lambda: (b := cluster.api.get("builds", NS, "hello"))["status"].get("tornDown") and b,
        "teardown",
    )
    assert leftovers(cluster, build) == {}
    assert {c["type"]: c["status"] for c in torn["status"]["conditions"]} == {
        "Succeeded": "True",
        "TornDown": "True",
    }
    # The TornDown event follows the status write that records it.
    wanted = {"Fetching", "Building", "Collecting", "Succeeded", "TornDown"}
    wait_for(lambda: wanted <= set(reasons(cluster, build)), "an Event per state change")
    metrics = ctl.metrics.registry
    assert metrics.get_sample_value("farm_pods_torn_down_total") == 1
    assert metrics.get_sample_value("farm_teardown_seconds_count") == 1
    assert (
        metrics.get_sample_value("farm_builds_total", {"tenant": "default", "result": "succeeded"})
        == 1
    )


def test_a_failed_build_is_recorded_never_collected_and_torn_down(cluster: Cluster) -> None:
    cluster.controller("a")
    cluster.monitor()
    build = cluster.api.create("builds", NS, build_manifest("broken"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_pod(
        cluster.api,
        RUN_NS,
        job(cluster.api, RUN_NS, build, "build"),
        exit_code=101,
        log=b"error[E0425]\n",
    )

    failed = cluster.wait_phase("broken", "Failed")
    assert failed["status"]["exitCode"] == 101
    assert failed["status"]["message"] == "the build exited with status 101"
    assert failed["status"]["artifacts"] == []
    wait_for(lambda: cluster.api.get("builds", NS, "broken")["status"].get("tornDown"), "teardown")
    assert leftovers(cluster, build) == {}
    # The collect policy (the only egress a build pod can get) was never created.
    created = [name for plural, _, name in cluster.api.created if plural == "networkpolicies"]
    assert created and not any(name.endswith("-collect") for name in created)
    assert "BuildFailed" in reasons(cluster, build)


def test_an_invalid_spec_fails_before_anything_is_created(cluster: Cluster) -> None:
    cluster.controller("a")
    bad = build_manifest(
        "bad", env={"PATH": "/evil"}, source={"git": "https://x.test/a.git", "revision": "main"}
    )
    build = cluster.api.create("builds", NS, bad)
    failed = cluster.wait_phase("bad", "Failed")
    assert "env: PATH is set by farm's sandbox policy; remove it" in failed["status"]["message"]
    assert "give the full commit id" in failed["status"]["message"]
    assert leftovers(cluster, build) == {}


def test_an_unexpected_error_in_one_build_never_stalls_the_others(cluster: Cluster) -> None:
    """More crashing Builds than workers (a bug, or input no check foresaw): each is
    backed off and retried, and a later Build still gets reconciled."""
    ctl = cluster.controller("a")
    real = ctl.reconciler.reconcile
    crashed: list[str] = []

    def crash_some(namespace: str, name: str) -> float | None:
        if name.startswith("crash"):
            crashed.append(name)
            raise RecursionError("maximum recursion depth exceeded")
        return real(namespace, name)

    ctl.reconciler.reconcile = crash_some  # type: ignore[method-assign]
    for i in range(3):  # two workers
        cluster.api.create("builds", NS, build_manifest(f"crash{i}"))
    wait_for(lambda: len(set(crashed)) == 3, "every crashing Build to be tried")
    bad = build_manifest("later", env={"PATH": "/evil"})
    cluster.api.create("builds", NS, bad)
    assert "PATH" in cluster.wait_phase("later", "Failed")["status"]["message"]
    wait_for(lambda: crashed.count("crash0") >= 2, "a crashed Build to be retried")


def test_deleting_a_build_mid_build_tears_everything_down_before_it_goes(cluster: Cluster) -> None:
    cluster.controller("a")
    build = cluster.api.create("builds", NS, build_manifest("doomed"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=None)
    cluster.wait_phase("doomed", "Building")

    cluster.api.delete("builds", NS, "doomed")
    wait_for(
        lambda: (
            not [b for b in cluster.api.list("builds", NS) if b["metadata"]["name"] == "doomed"]
        ),
        "Build gone",
    )
    # Everything of the Build was deleted by the controller before the Build itself,
    # not by the garbage collector afterwards.
    log = cluster.api.log
    build_gone = next(rv for rv, kind, plural, o in log if kind == "DELETED" and plural == "builds")
    deleted = {
        (p, o["metadata"]["name"]): rv
        for rv, kind, p, o in log
        if kind == "DELETED" and p != "builds"
    }
    assert len(deleted) == 8  # 2 Jobs, 1 pod, secret, PVC, 2 policies, ServiceAccount
    assert all(rv < build_gone for rv in deleted.values())


def test_a_controller_crash_mid_build_is_picked_up_by_its_successor(
    cluster: Cluster, tmp_path: Path
) -> None:
    first = cluster.controller("first")
    build = cluster.api.create("builds", NS, build_manifest("survivor"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_job = job(cluster.api, RUN_NS, build, "build")
    cluster.wait_phase("survivor", "Building")
    uids = {
        o["metadata"]["name"]: o["metadata"]["uid"]
        for p in OWNED
        for o in owned(cluster.api, RUN_NS, build, p)
    }

    cluster.stop(first, crash=True)
    cluster.monitor()
    assert (
        cluster.api.get("leases", "farm-system", "farm-controller")["spec"]["holderIdentity"]
        == "first"
    )
    build_pod(
        cluster.api, RUN_NS, build_job, exit_code=0
    )  # the build finished while no one watched

    second = cluster.controller("second")
    cluster.wait_phase("survivor", "Collecting")
    lease = cluster.api.get("leases", "farm-system", "farm-controller")["spec"]
    assert lease["holderIdentity"] == "second" and lease["leaseTransitions"] == 1
    # Nothing was created twice: every object the first controller made is the same
    # object (the successor's creates got 409 and adopted them).
    seen = {
        o["metadata"]["name"]: o["metadata"]["uid"]
        for p in OWNED
        for o in owned(cluster.api, RUN_NS, build, p)
    }
    assert {k: v for k, v in seen.items() if k in uids} == uids
    assert ("POST", f"/apis/batch/v1/namespaces/{RUN_NS}/jobs") in cluster.api.requests
    root = sandbox_tree(tmp_path / "pod", {"app": b"built"})
    assert (
        run_collector(cluster.api, RUN_NS, build, root, rerouted=cluster.artifact_url(second)) == 0
    )
    cluster.wait_phase("survivor", "Succeeded")
    wait_for(
        lambda: cluster.api.get("builds", NS, "survivor")["status"].get("tornDown"), "teardown"
    )


def test_an_expired_watch_relists_and_misses_nothing(cluster: Cluster) -> None:
    ctl = cluster.controller("a")
    cluster.api.create("builds", NS, build_manifest("before"))
    cluster.wait_phase("before", "Fetching")
    builds = ctl.informers[0]
    relists = builds.relists

    cluster.api.compact()  # etcd compaction: every open watch's resourceVersion is now too old
    cluster.api.create("builds", NS, build_manifest("after"))
    cluster.wait_phase("after", "Fetching")
    wait_for(lambda: builds.relists > relists, "a re-list")
    assert set(builds.cache) == {f"{NS}/before", f"{NS}/after"}


def test_a_graceful_stop_hands_leadership_over_and_the_successor_continues(
    cluster: Cluster,
) -> None:
    first = cluster.controller("first")
    wait_for(first.elector.leading.is_set, "first to lead")
    second = cluster.controller("second")
    build = cluster.api.create("builds", NS, build_manifest("handover"))
    cluster.wait_phase("handover", "Fetching")
    assert not second.elector.leading.is_set() and not second.informers

    cluster.stop(first)
    assert not first.elector.leading.is_set()
    # It released the Lease on the way out (holder cleared), rather than letting it expire.
    released = [
        o["spec"].get("holderIdentity")
        for _, kind, plural, o in cluster.api.log
        if plural == "leases" and kind == "MODIFIED"
    ]
    assert "" in released
    wait_for(second.elector.leading.is_set, "second to lead")
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    cluster.wait_phase("handover", "Building")
    lease = cluster.api.get("leases", "farm-system", "farm-controller")["spec"]
    assert lease["holderIdentity"] == "second"


def test_the_reaper_removes_orphans_and_counts_pods_left_after_teardown(cluster: Cluster) -> None:
    ref = BuildRef(NS, "ghost", "0000-gone")  # its Build no longer exists
    cluster.api.create("secrets", RUN_NS, objects.token_secret(ref, "t"))
    cluster.api.create("networkpolicies", RUN_NS, objects.build_policy(ref))
    done = cluster.api.create("builds", NS, build_manifest("done"))
    cluster.api.mutate(
        "builds", NS, "done", lambda b: b.update(status={"phase": "Failed", "tornDown": True})
    )
    stuck = objects.service_account(BuildRef(NS, "done", done["metadata"]["uid"]))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": stuck["metadata"], "spec": {}}
    cluster.api.create("pods", RUN_NS, pod)
    # A live Build in another namespace: its objects, in the same run namespace, are
    # mapped back to it by uid and left alone.
    other = cluster.api.create("builds", "team-b", build_manifest("ghost"))
    alive = BuildRef("team-b", "ghost", other["metadata"]["uid"])
    cluster.api.create("secrets", RUN_NS, objects.token_secret(alive, "t"))

    ctl = cluster.controller("a")
    sample = ctl.metrics.registry.get_sample_value
    # The counter moves once the reaper has finished that Build's leftovers.
    wait_for(lambda: sample("farm_sandboxes_reaped_total") == 1, "reaping")
    assert [s["metadata"]["name"] for s in cluster.api.list("secrets", RUN_NS)] == [
        alive.object_name("collector")
    ]
    assert not cluster.api.list("networkpolicies", RUN_NS)
    assert sample("farm_sandboxes_leaked") == 1  # the pod of "done", which was torn down

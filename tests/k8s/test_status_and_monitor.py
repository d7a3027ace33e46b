"""Status writes under contention, the node monitor's counts, and Kueue suspension,
against the fake API over real HTTP (no controller threads: one reconcile at a time)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from prometheus_client import CollectorRegistry

from farm.admission import Ceilings
from farm.errors import KubernetesError
from farm.k8s import names
from farm.k8s.artifacts import Ledger
from farm.k8s.config import ControllerConfig
from farm.k8s.names import run_role
from farm.k8s.nodemonitor import NodeMonitor
from farm.k8s.reconcile import Reconciler, build_container_id
from farm.k8s.resource import MAX_STATUS_ACTIONS
from farm.metrics import Metrics
from farm.observe.events import Context, TraceEvent
from farm.observe.spool import Observation
from farm.reprocheck import MAX_RUNS
from farm.store import Store
from tests.k8s.conftest import NS, RUN_NS, Cluster
from tests.k8s.kubelet import Spooled, build_manifest, build_pod, finish_job, job, run_cid
from tests.k8s.test_schemas import build_schema

BUILD_NAME = f"{names.GROUP}/build-name"


def reconciler(cluster: Cluster, tmp_path: Path) -> Reconciler:
    store = Store(tmp_path / "home")
    metrics = Metrics(CollectorRegistry())
    # Every run a check may have: these tests flood the status of all MAX_RUNS runs.
    config = ControllerConfig(ceilings=Ceilings(check_runs=MAX_RUNS))
    cluster.service(config, 8443)  # no upload here: only the Jobs need its address
    return Reconciler(cluster.kube, config, Ledger(store), store, metrics)


def settle(r: Reconciler, name: str, rounds: int = 10) -> None:
    """Reconcile until the step asks for no immediate retry."""
    for _ in range(rounds):
        if r.reconcile(NS, name) != 0.0:
            return


def test_a_stale_status_write_gets_409_and_the_retry_keeps_the_other_writer(
    cluster: Cluster, tmp_path: Path
) -> None:
    r = reconciler(cluster, tmp_path)
    build = cluster.api.create("builds", NS, build_manifest("contended"))
    settle(r, "contended")
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))

    # Another writer (the node monitor) patches the status between the reconciler's
    # read and its write: a genuine stale-resourceVersion race on the real server.
    real_get = cluster.kube.get_build

    def get_then_race(namespace: str, name: str) -> dict:
        seen = real_get(namespace, name)
        cluster.kube.patch_build_status(namespace, name, {"blocked": 2})
        cluster.kube.get_build = real_get  # type: ignore[method-assign]
        return seen

    cluster.kube.get_build = get_then_race  # type: ignore[method-assign]
    assert r.reconcile(NS, "contended") == 0.0  # 409: retry at once
    assert any(m == "PUT" and p.endswith("/contended/status") for m, p in cluster.api.requests)
    assert cluster.api.get("builds", NS, "contended")["status"]["phase"] == "Fetching"

    settle(r, "contended")
    status = cluster.api.get("builds", NS, "contended")["status"]
    assert (status["phase"], status["blocked"]) == ("Building", 2)


def test_a_queued_build_waits_suspended_for_kueue(cluster: Cluster, tmp_path: Path) -> None:
    r = reconciler(cluster, tmp_path)
    build = cluster.api.create("builds", NS, build_manifest("queued", queue="farm-builds"))
    settle(r, "queued")
    fetch = job(cluster.api, RUN_NS, build, "fetch")
    assert fetch["spec"]["suspend"] is True
    assert fetch["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "farm-builds"
    status = cluster.api.get("builds", NS, "queued")["status"]
    assert (status["phase"], status["message"]) == ("Pending", "waiting for Kueue")

    cluster.api.mutate(
        "jobs", RUN_NS, fetch["metadata"]["name"], lambda j: j["spec"].update(suspend=False)
    )
    settle(r, "queued")
    assert cluster.api.get("builds", NS, "queued")["status"]["phase"] == "Fetching"


def event(kind: str, **fields: object) -> TraceEvent:
    ctx = Context(time_ns=1, thread_group_id=7, thread_id=7, process_name="build-script-bu")
    return TraceEvent(
        kind=kind, message_type=0, connection=1, container_id="ab" * 32, context=ctx, fields=fields
    )


def test_the_node_monitor_maps_container_ids_to_builds_and_reports_counts(
    cluster: Cluster, tmp_path: Path
) -> None:
    r = reconciler(cluster, tmp_path)
    build = cluster.api.create("builds", NS, build_manifest("watched"))
    settle(r, "watched")
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    settle(r, "watched")
    build_job = job(cluster.api, RUN_NS, build, "build")
    build_pod(cluster.api, RUN_NS, build_job, exit_code=None)
    cid = "ab" * 32
    observed = Observation(
        container_id=cid,
        events=[
            event("open", pathname="/root/.ssh/id_rsa", flags=0, exit={"errorno": 2}),
            event("open", pathname="/usr/bin/cc", flags=0o101, exit={"errorno": 13}),
            event("chroot", pathname="/"),
        ],
        dropped=3,
    )
    source = Spooled({cid: observed})
    metrics = Metrics(CollectorRegistry())
    monitor = NodeMonitor(cluster.kube, metrics, source, "node-1")
    other_node = NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-2")

    assert monitor.scan() == 0  # still running: nothing to report yet
    build_pod(cluster.api, RUN_NS, build_job, exit_code=0)
    assert other_node.scan() == 0  # not its pod
    assert monitor.scan() == 1 and monitor.scan() == 0  # reported once
    assert source.asked == [cid]

    status = cluster.api.get("builds", NS, "watched")["status"]
    assert status["blocked"] == 3
    assert status["blockedByKind"] == {"sensitive_read": 1, "fs_write_denied": 1, "privilege": 1}
    shipped = status["observation"]
    assert (shipped["containerID"], shipped["events"], shipped["dropped"]) == (cid, 3, 3)
    assert [a["target"] for a in shipped["actions"]] == ["/root/.ssh/id_rsa", "/usr/bin/cc", "/"]
    sample = metrics.registry.get_sample_value
    assert sample("farm_blocked_actions_total", {"tenant": NS, "kind": "privilege"}) == 1
    assert sample("farm_observer_events_dropped_total") == 3
    # The controller's next status write keeps the monitor's counts.
    settle(r, "watched")
    status = cluster.api.get("builds", NS, "watched")["status"]
    assert (status["phase"], status["blocked"]) == ("Collecting", 3)


def exited(cluster: Cluster, tmp_path: Path, name: str) -> str:
    """A Build whose build container on node-1 has exited 0; returns its container id."""
    r = reconciler(cluster, tmp_path)
    build = cluster.api.create("builds", NS, build_manifest(name))
    settle(r, name)
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    settle(r, name)
    pod = build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=0)
    cid = build_container_id(pod)
    assert cid is not None
    return cid


def test_a_flood_of_actions_is_capped_and_marks_the_record_incomplete(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A build cannot hide one attempt behind thousands, nor blow the Build past what the
    API server stores: what does not fit is counted, and the record is incomplete."""
    cid = exited(cluster, tmp_path, "flood")
    long_path = "/root/.ssh/" + "k" * 3000
    events = [event("open", pathname=long_path, flags=0, exit={"errorno": 2})] * 300
    source = Spooled({cid: Observation(container_id=cid, events=events)})
    assert NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-1").scan() == 1

    doc = cluster.api.get("builds", NS, "flood")
    shipped = doc["status"]["observation"]
    listed = len(shipped["actions"])
    assert 0 < listed < MAX_STATUS_ACTIONS and shipped["unlisted"] == 300 - listed
    assert shipped["complete"] is False
    assert f"{300 - listed} of 300 actions not listed" in shipped["problem"]
    assert doc["status"]["blocked"] == 300
    assert len(json.dumps(doc)) < 1 << 20  # well within etcd's 1.5 MiB per object
    jsonschema.validate(doc, build_schema())


def test_the_runs_of_a_full_check_share_the_status_budget(cluster: Cluster, tmp_path: Path) -> None:
    """Each check run's record lands under its own key, and even a flood in every one of
    MAX_RUNS runs keeps the Build within what the API server stores."""
    r = reconciler(cluster, tmp_path)
    build = cluster.api.create("builds", NS, build_manifest("flood10", check=MAX_RUNS))
    settle(r, "flood10")
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    settle(r, "flood10")
    # Runs 1.. are pinned to run 0's node, so they wait for run 0's pod to have one.
    jobs = {j["metadata"]["name"].rsplit("-", 1)[-1] for j in cluster.api.list("jobs", RUN_NS)}
    assert "1" not in jobs and "build" in jobs
    events = [event("open", pathname="/root/.ssh/" + "k" * 3000, flags=0, exit={"errorno": 2})]
    seen = {}
    for run in range(MAX_RUNS):
        build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, run_role("build", run)), 0)
        seen[run_cid(run)] = Observation(container_id=run_cid(run), events=events * 300)
        if run == 0:
            settle(r, "flood10")  # runs 1.. are created once run 0's pod has a node
    monitor = NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), Spooled(seen), "node-1")
    assert monitor.scan() == MAX_RUNS

    doc = cluster.api.get("builds", NS, "flood10")
    records = [doc["status"]["observation"]] + [
        doc["status"]["checkRuns"][str(k)]["observation"] for k in range(1, MAX_RUNS)
    ]
    assert [o["containerID"] for o in records] == [run_cid(k) for k in range(MAX_RUNS)]
    assert all(o["actions"] and not o["complete"] for o in records)
    assert len(json.dumps(doc)) < 1_400_000  # under etcd's 1.5 MiB per object
    jsonschema.validate(doc, build_schema())


def test_a_failed_status_patch_is_retried_with_the_record_already_collected(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The observer's record is consumed when read, so a patch the API refuses must be
    retried with the same record, not with a fresh (now missing) one."""
    cid = exited(cluster, tmp_path, "flaky")
    source = Spooled({cid: Observation(container_id=cid, events=[event("chroot", pathname="/")])})
    monitor = NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-1")
    real_patch = cluster.kube.patch_build_status

    def unavailable(namespace: str, name: str, status: dict) -> dict:
        cluster.kube.patch_build_status = real_patch  # type: ignore[method-assign]
        raise KubernetesError("503 the API server is restarting", 503)

    cluster.kube.patch_build_status = unavailable  # type: ignore[method-assign]
    assert monitor.scan() == 0  # refused: logged, kept pending, not raised
    assert monitor.scan() == 1 and source.asked == [cid]
    shipped = cluster.api.get("builds", NS, "flaky")["status"]["observation"]
    assert shipped["complete"] and [a["kind"] for a in shipped["actions"]] == ["privilege"]


def test_a_pod_the_monitor_cannot_report_does_not_hold_up_the_others(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A Build whose status patch the API keeps refusing, and a pod with a garbled runs
    annotation, must not stop the monitor reporting the rest of its node."""
    stuck = exited(cluster, tmp_path, "stuck")
    exited(cluster, tmp_path, "fine")
    (fine_pod,) = [
        o
        for (plural, _, _), o in cluster.api.objects.items()
        if plural == "pods" and o["metadata"]["annotations"].get(BUILD_NAME) == "fine"
    ]
    fine = "cd" * 32  # its own container id, as on a real node
    fine_pod["status"]["initContainerStatuses"][0]["containerID"] = f"containerd://{fine}"
    fine_pod["metadata"]["annotations"][names.RUNS_ANNOTATION] = "lots"
    source = Spooled({c: Observation(container_id=c, events=[]) for c in (stuck, fine)})
    monitor = NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-1")
    real_patch = cluster.kube.patch_build_status

    def refuse_stuck(namespace: str, name: str, status: dict) -> dict:
        if name == "stuck":
            raise KubernetesError("422 the status is invalid", 422)
        return real_patch(namespace, name, status)

    cluster.kube.patch_build_status = refuse_stuck  # type: ignore[method-assign]
    assert monitor.scan() == 1
    assert cluster.api.get("builds", NS, "fine")["status"]["observation"]["containerID"] == fine
    assert "observation" not in (cluster.api.get("builds", NS, "stuck").get("status") or {})
    assert stuck in monitor.pending and fine in monitor.done

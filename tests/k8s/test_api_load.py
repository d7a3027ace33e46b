"""The load the controller and the node monitor put on the API server (issue 13, "API
load"): the monitor watches its node's pods by field selector instead of listing them
every second; a steady reconcile reads and never re-creates; every list is paged and
bounded. Against the fake (over real HTTP, with the real client); the same paths against
the real custom-resource server are in tests/k8s/test_real_api_load.py.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from farm.errors import GoneError, KubernetesError, ListTooLargeError
from farm.k8s import names, permissions
from farm.k8s.config import ControllerConfig
from farm.k8s.controller import Controller
from farm.k8s.kube import Kube
from farm.k8s.nodemonitor import NodeMonitor
from farm.k8s.objects import BuildRef, token_secret
from farm.k8s.watching import Informer
from farm.metrics import Metrics
from farm.store import Store
from tests.k8s.conftest import NS, RUN_NS, Cluster, clean, granted
from tests.k8s.fakeapi import CONTINUE_EXPIRED
from tests.k8s.kubelet import (
    BUILD_CID,
    Spooled,
    build_manifest,
    build_pod,
    finish_job,
    job,
    wait_for,
)

pytestmark = pytest.mark.k8s
PODS = f"/api/v1/namespaces/{RUN_NS}/pods"


def pod_requests(cluster: Cluster, watch: bool) -> list[dict[str, str]]:
    """The queries of the pod lists (or watches) made in the run namespace."""
    return [
        q
        for m, p, q in cluster.api.queries
        if m == "GET" and p == PODS and (q.get("watch") == "true") == watch
    ]


# --- the node monitor watches ------------------------------------------------------------
def test_the_node_monitor_watches_its_nodes_pods_and_lists_once(cluster: Cluster) -> None:
    """One list, then watches with ``spec.nodeName`` and bookmarks; no list per scan
    (the scan interval here is 50 ms, so listing would show as dozens)."""
    metrics = Metrics(CollectorRegistry())
    monitor = NodeMonitor(cluster.kube, metrics, Spooled({BUILD_CID: clean()}), "node-1")
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_for(lambda: pod_requests(cluster, watch=False), "the first list")
        cluster.controller("a")
        build = cluster.api.create("builds", NS, build_manifest("watched"))
        finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
        build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=0)
        wait_for(lambda: BUILD_CID in monitor.done, "the record reported from the watch")
        stop.wait(0.5)  # ten more scans
    finally:
        stop.set()
        thread.join(30)

    node = "spec.nodeName=node-1"
    lists = [q for q in pod_requests(cluster, watch=False) if q.get("fieldSelector") == node]
    watches = [q for q in pod_requests(cluster, watch=True) if q.get("fieldSelector") == node]
    assert len(lists) == 1 and lists[0]["limit"]  # one paged list
    assert watches and all(w["allowWatchBookmarks"] == "true" for w in watches)
    assert watches[0]["resourceVersion"]  # from the list's version, not "now"
    assert cluster.api.get("builds", NS, "watched")["status"]["observation"]["containerID"] == (
        BUILD_CID
    )


def test_a_pod_bound_to_the_node_later_reaches_the_monitor_and_one_elsewhere_never(
    cluster: Cluster,
) -> None:
    """The field selector's watch: a pod created unscheduled shows up when it is bound
    to this node (ADDED, as the watch cache reports a pod that starts matching), a pod
    bound to another node never does."""
    monitor = NodeMonitor(
        cluster.kube, Metrics(CollectorRegistry()), Spooled({BUILD_CID: clean()}), "node-2"
    )
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_for(monitor.pods.synced.is_set, "the first list")
        cluster.controller("a")
        build = cluster.api.create("builds", NS, build_manifest("bound"))
        finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
        pod = build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), 0)
        name = pod["metadata"]["name"]
        stop.wait(0.5)
        assert not monitor.pods.cache  # on node-1: not this monitor's
        cluster.api.mutate("pods", RUN_NS, name, lambda p: p["spec"].update(nodeName="node-2"))
        wait_for(lambda: BUILD_CID in monitor.done, "the pod bound to node-2")
        cluster.api.delete("pods", RUN_NS, name)
        wait_for(lambda: not monitor.pods.cache, "the DELETED event")
    finally:
        stop.set()
        thread.join(30)


def test_the_node_monitor_needs_only_its_own_grants_to_watch(cluster: Cluster) -> None:
    """Its calls alone (the fixture's check pools them with the controller's, which may
    watch pods anyway) are within the node monitor's Roles: list and watch."""
    monitor = NodeMonitor(
        cluster.kube, Metrics(CollectorRegistry()), Spooled({BUILD_CID: clean()}), "node-1"
    )
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_for(lambda: pod_requests(cluster, watch=True), "a watch")
    finally:
        stop.set()
        thread.join(30)
    own = {RUN_NS: permissions.NODE_MONITOR_PODS}
    assert [
        c for c in cluster.api.rbac_calls if not granted(c, permissions.NODE_MONITOR, own)
    ] == []


# --- the fake's field selectors, pages and 410s, as the API server's --------------------
def test_a_field_selected_watch_reports_objects_starting_and_stopping_to_match(
    cluster: Cluster,
) -> None:
    api = cluster.api
    start = api.rv
    pod = {"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"nodeName": ""}}
    api.create("pods", RUN_NS, pod)
    api.mutate("pods", RUN_NS, "p", lambda p: p["spec"].update(nodeName="n1"))
    api.mutate("pods", RUN_NS, "p", lambda p: p.update(status={"phase": "Running"}))
    api.mutate("pods", RUN_NS, "p", lambda p: p["spec"].update(nodeName="n2"))
    api.mutate("pods", RUN_NS, "p", lambda p: p["spec"].update(nodeName="n1"))
    api.delete("pods", RUN_NS, "p")

    fields = [("spec.nodeName", True, "n1")]
    seen = api.events_since("pods", start, RUN_NS, "a=b", fields)

    assert [kind for _, kind, _ in seen] == ["ADDED", "MODIFIED", "DELETED", "ADDED", "DELETED"]
    # A "stopped matching" DELETED carries the last state that matched, at the change's
    # resourceVersion.
    _, _, left = seen[2]
    assert left["spec"]["nodeName"] == "n1" and left["status"] == {"phase": "Running"}
    assert [int(o["metadata"]["resourceVersion"]) for _, _, o in seen] == sorted(
        r for r, _, _ in seen
    )
    assert api.events_since("pods", start, RUN_NS, "a=c", fields) == []


def test_an_unknown_field_selector_is_a_bad_request(cluster: Cluster) -> None:
    with pytest.raises(KubernetesError) as refused:
        cluster.kube.list("Pod", RUN_NS, "a=b", fields="spec.hostname=x")
    assert refused.value.status == 400
    with pytest.raises(KubernetesError) as watch_refused:
        Informer(
            functools.partial(cluster.kube.core.list_namespaced_pod, RUN_NS),
            lambda _o: None,
            field_selector="spec.bogus=x",
            watch_timeout=1,
        ).watch_once()
    assert watch_refused.value.status == 400


def test_pages_come_from_the_first_pages_snapshot_and_expire_with_compaction(
    cluster: Cluster,
) -> None:
    api = cluster.api
    for i in range(5):
        api.create("secrets", RUN_NS, {"metadata": {"name": f"s{i}"}})

    first = api.select("secrets", RUN_NS, {"limit": "2"})
    api.create("secrets", RUN_NS, {"metadata": {"name": "s9"}})  # after the snapshot
    second = api.select(
        "secrets", RUN_NS, {"limit": "2", "continue": first["metadata"]["continue"]}
    )
    third = api.select(
        "secrets", RUN_NS, {"limit": "2", "continue": second["metadata"]["continue"]}
    )

    listed = [o["metadata"]["name"] for p in (first, second, third) for o in p["items"]]
    assert listed == ["s0", "s1", "s2", "s3", "s4"]
    assert first["metadata"]["remainingItemCount"] == 3
    assert "continue" not in third["metadata"]
    assert {p["metadata"]["resourceVersion"] for p in (first, second, third)} == {
        first["metadata"]["resourceVersion"]
    }
    # Through the client: a continue token whose snapshot was compacted is 410 Gone.
    kube = cluster.kube
    page = kube._call("list", kube.core.list_namespaced_secret, RUN_NS, limit=2)
    api.compact()
    with pytest.raises(GoneError) as gone:
        token = page["metadata"]["continue"]
        kube._call("list", kube.core.list_namespaced_secret, RUN_NS, limit=2, _continue=token)
    assert gone.value.status == 410
    assert CONTINUE_EXPIRED.startswith("The provided continue parameter is too old")


# --- every list is paged and bounded -----------------------------------------------------
def secrets(cluster: Cluster, n: int) -> None:
    for i in range(n):
        ref = BuildRef(NS, f"b{i}", f"uid-{i}")
        cluster.api.create("secrets", RUN_NS, token_secret(ref, "t"))


def paged_kube(cluster: Cluster, max_items: int = 100) -> tuple[Kube, Metrics]:
    metrics = Metrics(CollectorRegistry())
    kube = Kube(
        cluster.kube.api_client,
        request_timeout=10,
        metrics=metrics,
        page=2,
        max_list_items=max_items,
    )
    return kube, metrics


def test_a_list_is_read_in_pages(cluster: Cluster) -> None:
    secrets(cluster, 5)
    kube, _ = paged_kube(cluster)

    found = kube.list("Secret", RUN_NS, f"app.kubernetes.io/managed-by={names.MANAGED_BY}")

    assert len(found) == 5
    asked = [q for m, p, q in cluster.api.queries if p.endswith(f"/{RUN_NS}/secrets")]
    assert [q["limit"] for q in asked] == ["2", "2", "2"]
    assert ["continue" in q for q in asked] == [False, True, True]


def test_a_list_past_the_bound_fails_clearly_and_is_counted(cluster: Cluster) -> None:
    secrets(cluster, 5)
    kube, metrics = paged_kube(cluster, max_items=3)

    with pytest.raises(ListTooLargeError) as refused:
        kube.list("Secret", RUN_NS, "")

    assert "more than 3 Secret objects, farm's bound on one list" in str(refused.value)
    assert "delete the leftovers" in str(refused.value)
    sample = metrics.registry.get_sample_value
    assert sample("farm_kube_list_overflow_total", {"kind": "Secret"}) == 1
    # It stopped at the page that crossed the bound: no more pages were asked for.
    assert len([p for _, p, _ in cluster.api.queries if p.endswith("/secrets")]) == 2


def test_the_reaper_and_the_informers_list_in_pages(cluster: Cluster, tmp_path: Any) -> None:
    """The controller's own lists (Builds, Jobs, pods, and the reaper's) all page."""
    kube, metrics = paged_kube(cluster)
    for i in range(3):
        cluster.api.create("builds", NS, build_manifest(f"b{i}"))
    ctl = Controller(kube, ControllerConfig(), Store(tmp_path / "home"), metrics, "solo")
    ctl.reap()
    builds = "/apis/farm.dev/v1alpha1/builds"
    asked = [q for m, p, q in cluster.api.queries if p == builds]
    assert len(asked) == 2 and all(q["limit"] == "2" for q in asked)
    informer = Informer(
        functools.partial(kube.core.list_namespaced_pod, RUN_NS),
        lambda _o: None,
        kind="Pod",
        page=2,
        max_items=1,
        metrics=metrics,
    )
    for i in range(2):
        cluster.api.create("pods", RUN_NS, {"metadata": {"name": f"p{i}"}, "spec": {}})
    with pytest.raises(ListTooLargeError):
        informer.relist()
    assert metrics.registry.get_sample_value("farm_kube_list_overflow_total", {"kind": "Pod"}) == 1


# --- reconnect backoff ----------------------------------------------------------------
def test_the_informer_backs_off_doubling_to_a_bound_and_resets_on_success(
    cluster: Cluster,
) -> None:
    informer = Informer(
        functools.partial(cluster.kube.core.list_namespaced_pod, RUN_NS),
        lambda _o: None,
        retry_delay=0.05,
        max_delay=0.2,
        watch_timeout=1,
        kind="Pod",
    )
    assert [informer.backoff() for _ in range(5)] == [0.05, 0.1, 0.2, 0.2, 0.2]
    informer.failures = 0
    cluster.api.fail_next[("GET", "pods")] = 500  # the first list fails
    informer.start("pods")
    try:
        wait_for(informer.synced.is_set, "a list after the failure")
        wait_for(lambda: informer.failures == 0, "the backoff reset")
    finally:
        informer.stop()


def test_a_watch_that_expires_at_once_every_time_is_not_relisted_in_a_loop(
    cluster: Cluster,
) -> None:
    """A 410 re-lists at once; another before the watch got anywhere backs off."""
    lists: list[float] = []
    real = functools.partial(cluster.kube.core.list_namespaced_pod, RUN_NS)

    def expiring(**kwargs: Any) -> Any:
        if kwargs.get("watch"):
            raise ApiException(status=410, reason="Expired")
        lists.append(time.monotonic())
        return real(**kwargs)

    informer = Informer(expiring, lambda _o: None, retry_delay=0.2, max_delay=0.4, kind="Pod")
    informer.start("pods")
    try:
        wait_for(lambda: len(lists) >= 5, "five lists")
    finally:
        informer.stop()
    # The first two lists follow each other at once; from then on, the backoff between.
    gaps = [b - a for a, b in itertools.pairwise(lists[1:])]
    assert min(gaps) >= 0.2, gaps


# --- get before create -----------------------------------------------------------------
def test_a_steady_build_is_reconciled_without_a_single_create(cluster: Cluster) -> None:
    """Every object of a running Build exists: reconciling it again reads them and
    writes nothing (before, each reconcile POSTed every object and got 409s back)."""
    ctl = cluster.controller("a")
    build = cluster.api.create("builds", NS, build_manifest("steady"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=None)
    cluster.wait_phase("steady", "Building")
    cluster.stop(ctl)  # no background reconciles from here on
    ctl.reconciler.reconcile(NS, "steady")  # settle whatever the last write changed
    before = len(cluster.api.requests)

    for _ in range(5):
        ctl.reconciler.reconcile(NS, "steady")

    methods = [m for m, _ in cluster.api.requests[before:]]
    assert "POST" not in methods, cluster.api.requests[before:]
    assert set(methods) == {"GET"}

"""Paged lists and field-selected watches against the REAL custom-resource API server
(apiextensions-apiserver and etcd, ``make apiserver``; skipped when not built), for
Builds, the one kind it serves: the same ``farm.k8s.paging`` and ``Informer`` code the
controller and the node monitor run on pods. The fake's side is
tests/k8s/test_api_load.py; the field-selected watch runs here against both.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from farm.errors import GoneError, ListTooLargeError
from farm.k8s import names
from farm.k8s.kube import Kube
from farm.k8s.watching import Informer
from farm.metrics import Metrics
from tests.k8s.conftest import NS, Cluster, Routed
from tests.k8s.kubelet import build_manifest, wait_for

pytestmark = pytest.mark.k8s


def paged(routed: Routed, max_items: int = 1000) -> tuple[Kube, Metrics]:
    metrics = Metrics(CollectorRegistry())
    kube = Kube(
        routed.kube.api_client,
        request_timeout=10,
        metrics=metrics,
        page=2,
        max_list_items=max_items,
    )
    return kube, metrics


def make(routed: Routed, *names_: str) -> list[dict[str, Any]]:
    made = []
    for name in names_:
        code, body = routed.real.request("POST", routed.build_path(), build_manifest(name))
        assert code == 201, body
        made.append(body)
    return made


def test_builds_are_listed_in_pages_by_the_real_server(routed: Routed) -> None:
    make(routed, *(f"b{i}" for i in range(5)))
    kube, _ = paged(routed)

    found = kube.list_builds()

    mine = sorted(
        b["metadata"]["name"] for b in found if b["metadata"]["namespace"] == routed.namespace
    )
    assert mine == [f"b{i}" for i in range(5)]
    lists = [p for m, p in routed.router.real_requests if p == f"/apis/{names.API_VERSION}/builds"]
    assert len(lists) >= 3  # 2 + 2 + 1: the real server's continue tokens were followed


def test_a_list_past_the_bound_fails_against_the_real_server(routed: Routed) -> None:
    make(routed, *(f"b{i}" for i in range(5)))
    kube, metrics = paged(routed, max_items=3)

    with pytest.raises(ListTooLargeError) as refused:
        kube.list_builds()

    assert "more than 3 Build objects" in str(refused.value)
    assert (
        metrics.registry.get_sample_value("farm_kube_list_overflow_total", {"kind": "Build"}) == 1
    )


def test_a_list_whose_snapshot_is_compacted_between_pages_is_listed_again(
    routed_uncached: Routed, real_etcd: Any
) -> None:
    """The real server's continue token pins the first page's revision; once etcd
    compacts past it the next page is 410 Gone, and the informer lists from scratch."""
    routed = routed_uncached
    make(routed, *(f"b{i}" for i in range(5)))
    list_raw = functools.partial(
        routed.kube.custom.list_namespaced_custom_object,
        names.GROUP,
        names.VERSION,
        routed.namespace,
        names.PLURAL,
    )
    compacted: list[int] = []

    def compacting(**kwargs: Any) -> Any:
        """The real list; after the first first page, a change and a compaction."""
        response = list_raw(**kwargs)
        if "_continue" not in kwargs and not compacted and kwargs.get("limit"):
            make(routed, "late")
            compacted.append(real_etcd.compact())
        return response

    builds = Informer(compacting, lambda _o: None, kind="Build", page=2, retry_delay=0.1)
    with pytest.raises(GoneError) as gone:
        builds.relist()
    assert gone.value.status == 410 and compacted

    builds.start("builds")
    try:
        wait_for(lambda: builds.relists == 1, "a list from scratch")
        assert len(builds.cache) == 6
    finally:
        builds.stop()


# --- a field-selected watch, the node monitor's kind of watch, on both -------------------
@dataclass
class Target:
    kube: Kube
    namespace: str
    create: Any
    delete: Any


@pytest.fixture(params=["real", "fake"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "real":
        routed: Routed = request.getfixturevalue("routed")
        yield Target(
            routed.kube,
            routed.namespace,
            lambda name: make(routed, name)[0],
            lambda name: routed.real.request("DELETE", routed.build_path(name)),
        )
    else:
        cluster: Cluster = request.getfixturevalue("cluster")
        yield Target(
            cluster.kube,
            NS,
            lambda name: cluster.api.create("builds", NS, build_manifest(name)),
            lambda name: cluster.api.delete("builds", NS, name),
        )


def test_a_field_selected_watch_sees_only_its_object_and_bookmarks_past_the_rest(
    target: Target,
) -> None:
    """``metadata.name`` is the field every kind selects on (the real server's Builds
    have no other): the informer sees only its object's ADDED and DELETED, and a
    bookmark carries it past the changes of the others."""
    target.create("one")
    seen: list[tuple[str, str]] = []
    list_raw = functools.partial(
        target.kube.custom.list_namespaced_custom_object,
        names.GROUP,
        names.VERSION,
        target.namespace,
        names.PLURAL,
    )
    builds = Informer(
        list_raw,
        lambda o: seen.append((o["metadata"]["name"], o["metadata"]["resourceVersion"])),
        field_selector="metadata.name=one",
        watch_timeout=4,
        kind="Build",
        retry_delay=0.1,
    )
    builds.start("builds")
    try:
        wait_for(lambda: builds.synced.is_set() and seen, "the first list")
        other = target.create("two")
        wait_for(
            lambda: int(builds.resource_version or 0) >= int(other["metadata"]["resourceVersion"]),
            "a bookmark past the other Build",
        )
        assert [name for name, _ in seen] == ["one"]
        target.delete("one")
        wait_for(lambda: not builds.cache, "the DELETED event")
        assert [name for name, _ in seen] == ["one", "one"]
    finally:
        builds.stop()

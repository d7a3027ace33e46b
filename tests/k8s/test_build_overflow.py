"""One tenant's flood of Builds cannot blind the controller to the other namespaces
(review finding: a cluster-wide Build list past the bound used to fail, so the Build
informer retried forever and never synced, and expiry failed the same way). Past
``max_builds`` the Build informer and the expiry sweep keep a fair share, trimmed from
the namespaces holding the most (farm.k8s.paging.FairShare), and go on; the orphan
reaper, which would judge an unseen Build gone, still fails. Against the fake API over
real HTTP, with the bound made small."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from farm.errors import ListTooLargeError
from farm.k8s.config import ControllerConfig
from farm.k8s.kube import Kube
from farm.k8s.paging import FairShare
from farm.metrics import Metrics
from tests.k8s.conftest import RUN_NS, Cluster
from tests.k8s.kubelet import build_manifest, job, wait_for

pytestmark = pytest.mark.k8s
FLOOD = "a-flood"  # lists come sorted by namespace: the flood is read first
OTHER = "team-b"


def small_bound(cluster: Cluster, bound: int) -> Metrics:
    """Every list of the cluster's Kube in pages of 2, bounded at ``bound``."""
    metrics = Metrics(CollectorRegistry())
    cluster.kube = Kube(
        cluster.kube.api_client, request_timeout=10, metrics=metrics, page=2, max_list_items=bound
    )
    return metrics


def obj(ns: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}}


def names_of(items: list[dict[str, Any]]) -> list[str]:
    return [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in items]


# --- the fair share ---------------------------------------------------------------------
def test_the_fair_share_trims_the_namespace_holding_the_most() -> None:
    share = FairShare(5)
    share.add([obj(FLOOD, f"f{i}") for i in range(8)])
    share.add([obj(OTHER, "mine")])
    assert names_of(share.items()) == [f"{FLOOD}/f{i}" for i in range(4)] + [f"{OTHER}/mine"]
    assert share.overflowed and share.seen == {FLOOD: 8, OTHER: 1}


def test_the_fair_share_is_exactly_the_bound_when_namespaces_outnumber_it() -> None:
    share = FairShare(3)
    share.add([obj(f"ns{i}", "b") for i in range(5)])
    assert names_of(share.items()) == ["ns0/b", "ns1/b", "ns2/b"]
    share = FairShare(7)
    share.add([obj("x", f"{i}") for i in range(5)] + [obj("y", f"{i}") for i in range(5)])
    assert [n.split("/")[0] for n in names_of(share.items())] == ["x"] * 4 + ["y"] * 3


def test_a_fair_list_reads_every_page_counts_and_names_the_flood(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = small_bound(cluster, 4)
    for i in range(6):
        cluster.api.create("builds", FLOOD, build_manifest(f"f{i}"))
    cluster.api.create("builds", OTHER, build_manifest("mine"))

    with caplog.at_level(logging.WARNING, logger="farm.k8s.paging"):
        kept = cluster.kube.list_builds(keep=True)

    assert f"{OTHER}/mine" in names_of(kept) and len(kept) == 4
    sample = metrics.registry.get_sample_value
    assert sample("farm_kube_list_overflow_total", {"kind": "Build"}) == 1
    assert f"{FLOOD}: 6, {OTHER}: 1" in caplog.text
    assert "ResourceQuota" in caplog.text
    with pytest.raises(ListTooLargeError):  # without keep, as before
        cluster.kube.list_builds()


# --- the controller -----------------------------------------------------------------------
def test_a_build_in_another_namespace_is_reconciled_while_one_holds_more_than_the_bound(
    cluster: Cluster,
) -> None:
    """The flood is there before the controller starts (a restart, a failover, a 410's
    re-list): its Build informer syncs on a fair share and reconciles team-b's Build."""
    small_bound(cluster, 6)  # the Job and pod informers' bound; Builds': max_builds
    for i in range(8):  # refused at admission: they create nothing in the run namespace
        cluster.api.create("builds", FLOOD, build_manifest(f"f{i}", image="debian:bookworm"))
    mine = cluster.api.create("builds", OTHER, build_manifest("mine"))

    ctl = cluster.controller("a", ControllerConfig(max_builds=6), reap_seconds=3600)

    assert job(cluster.api, RUN_NS, mine, "fetch")
    wait_for(
        lambda: (
            cluster.api.get("builds", OTHER, "mine").get("status", {}).get("phase") == "Fetching"
        ),
        "team-b's Build to be reconciled",
    )
    builds = next(i for i in ctl.informers if i.kind == "Build")
    assert builds.synced.is_set() and f"{OTHER}/mine" in builds.cache
    sample = ctl.metrics.registry.get_sample_value
    assert sample("farm_kube_list_overflow_total", {"kind": "Build"}) >= 1


def test_expiry_goes_on_past_the_bound_and_the_reaper_fails_closed(cluster: Cluster) -> None:
    small_bound(cluster, 4)
    config = ControllerConfig(build_ttl_seconds=0, build_history_limit=1, max_builds=4)
    ctl = cluster.controller("a", config, reap_seconds=3600)
    for ns, name in [(OTHER, "older"), (OTHER, "newer")] + [(FLOOD, f"f{i}") for i in range(3)]:
        cluster.api.create("builds", ns, build_manifest(name, check=1))  # fails at once
        wait_for(
            lambda ns=ns, name=name: (
                cluster.api.get("builds", ns, name).get("status", {}).get("tornDown")
            ),
            f"Build {name} to be torn down",
        )

    # The reaper must see every Build: past the bound it deletes nothing and says so.
    with pytest.raises(ListTooLargeError):
        ctl.reap()

    assert ctl.expire() >= 1

    wait_for(lambda: not _exists(cluster, OTHER, "older"), "team-b's older Build to expire")
    assert _exists(cluster, OTHER, "newer")


def _exists(cluster: Cluster, ns: str, name: str) -> bool:
    return any(b["metadata"]["name"] == name for b in cluster.api.list("builds", ns))


def test_max_builds_defaults_to_a_hundred_thousand_and_must_be_positive() -> None:
    assert ControllerConfig().max_builds == 100_000
    with pytest.raises(ValueError, match="max_builds"):
        ControllerConfig(max_builds=0)

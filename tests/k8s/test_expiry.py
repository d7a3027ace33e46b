"""Finished Builds expire: past the operator's TTL or beyond the per-namespace history
limit (farm.k8s.expiry), oldest first, with their records in the controller's store,
and nothing left stuck by the finalizer. Against the fake API over real HTTP; the real
server's side (uid precondition, finalizer) is in test_real_apiserver.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from farm.errors import ConflictError, KubeNotFoundError, NotFoundError
from farm.k8s import names
from farm.k8s.config import ControllerConfig
from farm.k8s.controller import Controller
from farm.k8s.expiry import Retention, expired, record_ids
from tests.k8s.conftest import NS, Cluster
from tests.k8s.kubelet import build_manifest, wait_for

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
DAY = 86400


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def finished(name: str, ago: timedelta, ns: str = NS, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{ns}-{name}",
            "creationTimestamp": stamp(NOW - ago - timedelta(minutes=5)),
        },
        "status": {
            "phase": "Failed",
            "tornDown": True,
            "completionTime": stamp(NOW - ago),
            **status,
        },
    }


def named(builds: list[dict[str, Any]]) -> list[str]:
    return [b["metadata"]["name"] for b in builds]


def test_a_build_past_the_ttl_expires_and_one_within_it_does_not() -> None:
    builds = [finished("fresh", timedelta(days=6)), finished("old", timedelta(days=8))]
    assert named(expired(builds, Retention(7 * DAY, 0), NOW)) == ["old"]
    assert expired(builds, Retention(0, 0), NOW) == []  # 0 disables both


def test_the_history_limit_keeps_the_newest_per_namespace_and_expires_oldest_first() -> None:
    builds = [
        finished("b", timedelta(hours=2)),
        finished("a", timedelta(hours=3)),
        finished("c", timedelta(hours=1)),
        finished("d", timedelta(hours=4)),
        finished("other", timedelta(hours=9), ns="team-b"),
    ]
    assert named(expired(builds, Retention(0, 2), NOW)) == ["d", "a"]
    # Both rules: the union, oldest first.
    assert named(expired(builds, Retention(5 * 3600, 3), NOW)) == ["other", "d"]


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Building", "tornDown": False},
        {"phase": "Collecting"},
        {"phase": "Succeeded", "tornDown": False},  # finished, teardown not done
        {"phase": "Quarantined", "tornDown": False},
    ],
)
def test_a_running_or_not_yet_torn_down_build_never_expires(status: dict[str, Any]) -> None:
    build = finished("busy", timedelta(days=30), **status)
    assert expired([build], Retention(DAY, 1), NOW) == []
    assert expired([build, finished("x", timedelta(days=30))], Retention(0, 1), NOW) == []


def test_a_build_already_being_deleted_is_left_to_its_finalizer() -> None:
    build = finished("going", timedelta(days=30))
    build["metadata"]["deletionTimestamp"] = stamp(NOW)
    assert expired([build], Retention(DAY, 0), NOW) == []


def test_a_build_without_completion_time_counts_from_its_creation() -> None:
    build = finished("legacy", timedelta(days=30))
    del build["status"]["completionTime"]
    assert named(expired([build], Retention(DAY, 0), NOW)) == ["legacy"]


def test_the_defaults_keep_seven_days_and_a_hundred_per_namespace() -> None:
    config = ControllerConfig()
    assert (config.build_ttl_seconds, config.build_history_limit) == (7 * DAY, 100)
    with pytest.raises(ValueError, match="build_ttl_seconds"):
        ControllerConfig(build_ttl_seconds=-1)


# --- the controller against the fake API ------------------------------------------------------
def failed_build(cluster: Cluster, ctl: Controller, name: str, ns: str = NS) -> dict[str, Any]:
    """A Build that fails at once (InvalidSpec), recorded in the store and torn down."""
    build = cluster.api.create("builds", ns, build_manifest(name, check=1))
    wait_for(
        lambda: cluster.api.get("builds", ns, name).get("status", {}).get("tornDown"),
        f"Build {name} to be torn down",
    )
    rid = names.record_id(ns, name, build["metadata"]["uid"])
    assert ctl.reconciler.store.get(rid).id == rid
    return build


def gone(cluster: Cluster, ns: str, name: str) -> bool:
    return not [b for b in cluster.api.list("builds", ns) if b["metadata"]["name"] == name]


def test_the_controller_deletes_an_expired_build_and_its_records(cluster: Cluster) -> None:
    ctl = cluster.controller("a", reap_seconds=3600)
    build = failed_build(cluster, ctl, "stale")
    kept = failed_build(cluster, ctl, "kept", ns="team-b")
    assert ctl.expire() == 0  # within 7 days, and far below 100 per namespace

    assert ctl.expire(datetime.now(UTC) + timedelta(days=8)) == 2

    # The finalizer (teardown already done) lets both go: nothing stuck Terminating.
    wait_for(lambda: gone(cluster, NS, "stale") and gone(cluster, "team-b", "kept"), "deletion")
    for each in (build, kept):
        meta = each["metadata"]
        for rid in record_ids(each):
            with pytest.raises(NotFoundError):
                ctl.reconciler.store.get(rid)
        assert rid.startswith(f"{meta['namespace']}.{meta['name']}.run9-")


def test_the_history_limit_deletes_the_oldest_of_a_namespace_only(cluster: Cluster) -> None:
    config = ControllerConfig(build_ttl_seconds=0, build_history_limit=1)
    ctl = cluster.controller("a", config, reap_seconds=3600)
    first = failed_build(cluster, ctl, "a-first")
    failed_build(cluster, ctl, "b-second")
    failed_build(cluster, ctl, "alone", ns="team-b")

    assert ctl.expire() == 1

    wait_for(lambda: gone(cluster, NS, "a-first"), "the oldest Build's deletion")
    assert not gone(cluster, NS, "b-second") and not gone(cluster, "team-b", "alone")
    sample = ctl.metrics.registry.get_sample_value
    assert sample("farm_builds_expired_total", {"tenant": NS}) == 1
    with pytest.raises(NotFoundError):
        ctl.reconciler.store.get(names.record_id(NS, "a-first", first["metadata"]["uid"]))
    assert ctl.expire() == 0


def test_the_reaper_pass_expires_builds(cluster: Cluster) -> None:
    config = ControllerConfig(build_ttl_seconds=0, build_history_limit=1)
    ctl = cluster.controller("a", config, reap_seconds=0.2)
    failed_build(cluster, ctl, "a-first")
    failed_build(cluster, ctl, "b-second")
    wait_for(lambda: gone(cluster, NS, "a-first"), "the reaper to expire the oldest")
    assert not gone(cluster, NS, "b-second")


def test_a_recreated_build_of_the_same_name_is_not_deleted(cluster: Cluster) -> None:
    """The delete carries the expired Build's uid as a precondition."""
    cluster.api.create("builds", NS, build_manifest("again"))
    with pytest.raises(ConflictError):
        cluster.kube.delete_build(NS, "again", "uid-of-an-older-again")
    assert not gone(cluster, NS, "again")
    with pytest.raises(KubeNotFoundError):
        cluster.kube.delete_build(NS, "never", "uid")

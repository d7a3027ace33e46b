"""A cluster build's blocked actions live in the controller's store, not in its Build's
status (farm.k8s.blocked): the status keeps a digest and bounded counts, the verdict is
judged from the stored list, a missing list fails closed, and `farm blocked DIGEST`
reads it back. Against the fake API over real HTTP with the real node monitor."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from farm.errors import NotFoundError
from farm.k8s import blocked
from farm.k8s.nodemonitor import observation_status
from farm.k8s.resource import MAX_SEVERITIES, ObservationStatus, RunStatus
from farm.observe.classify import BlockedAction
from farm.observe.spool import Observation
from farm.records import Status
from farm.store import Store
from tests.k8s.conftest import Cluster
from tests.k8s.kubelet import BUILD_CID
from tests.k8s.test_observation import evil, farm, record_id, run_build, torn_down


def action(target: str, severity: str | None = None, kind: str = "network") -> BlockedAction:
    return BlockedAction(
        kind=kind,
        operation="connect",
        target=target,
        errno="ENETUNREACH",
        time_ns=1,
        pid=7,
        process_name="build-script-build",
        executable="/target/debug/build/evil-1/build-script-build",
        argv=["build-script-build"],
        package="evil",
        version="0.3.1",
        role="build script",
        severity=severity,
    )


def test_a_quarantined_builds_status_holds_a_digest_and_counts_not_the_actions(
    cluster: Cluster, tmp_path: Path
) -> None:
    ctl = cluster.controller("a")
    cluster.monitor({BUILD_CID: evil()})
    build = run_build(cluster, tmp_path, ctl, "tainted")
    done = torn_down(cluster, "tainted")
    status = done["status"]
    assert status["phase"] == "Quarantined"
    seen = status["observation"]
    assert seen["actions"] == [] and seen["listed"] == 1
    assert status["blocked"] == 1 and status["blockedByKind"] == {"network": 1}
    assert status["blockedBySeverity"] == {"normal": 1}
    # Nothing of the action (its address, package, argv) is left in the Build.
    assert "10.1.2.3" not in json.dumps(done) and "build-script-build" not in json.dumps(done)

    store = ctl.reconciler.store
    digest = seen["actionsSha256"]
    data = store.blob_path(digest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    [stored] = blocked.read(store, digest)
    assert data == blocked.canonical([stored])  # the digest is of the canonical list
    assert (stored.package, stored.target) == ("evil", "10.1.2.3:443")
    # The record names it, so `farm gc` keeps it while the record exists.
    record = store.get(record_id(build))
    assert record.status is Status.QUARANTINED and record.blocked_actions_sha256 == digest
    assert [a["target"] for a in record.blocked_actions] == ["10.1.2.3:443"]
    assert digest in store.referenced_blobs()

    shown = farm(store.home, "blocked", f"sha256:{digest}")
    assert shown.returncode == 0, shown.stderr
    assert "network: connect 10.1.2.3:443 by evil 0.3.1 (build script)" in shown.stdout
    as_json = farm(store.home, "blocked", digest, "--json")
    assert json.loads(as_json.stdout)[0]["address"] == "10.1.2.3"


def test_a_clean_build_keeps_an_empty_record_and_no_digest(
    cluster: Cluster, tmp_path: Path
) -> None:
    ctl = cluster.controller("a")
    cluster.monitor()
    run_build(cluster, tmp_path, ctl, "clean")
    status = torn_down(cluster, "clean")["status"]
    assert status["phase"] == "Succeeded"
    assert status["observation"]["actionsSha256"] == "" and status["observation"]["listed"] == 0
    assert status.get("blockedBySeverity", {}) == {}


def test_a_stored_list_that_is_missing_makes_the_record_incomplete(tmp_path: Path) -> None:
    """Judged from the store: a digest whose blob is gone never reads as 'no actions'."""
    store = Store(tmp_path / "home")
    state = RunStatus(observation=ObservationStatus(containerID="c", actions=[action("a:1")]))
    blocked.stash(store, state)
    seen = state.observation
    assert seen is not None and seen.actions == [] and seen.listed == 1
    judged, actions = blocked.stored(store, seen)
    assert judged.complete and [a.target for a in actions] == ["a:1"]

    store.blob_path(seen.actionsSha256).unlink()
    judged, actions = blocked.stored(store, seen)
    assert actions == [] and not judged.complete
    assert "not in this store" in judged.problem


def test_a_stored_list_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    sha, _ = store.put_bytes(blocked.canonical([action("a:1")]))
    path = store.blob_path(sha)
    path.chmod(0o644)
    path.write_bytes(blocked.canonical([]))
    with pytest.raises(NotFoundError, match="does not match its digest"):
        blocked.read(store, sha)
    with pytest.raises(NotFoundError, match="64 hex"):
        blocked.read(store, "../../etc/passwd")


def test_stash_is_idempotent_and_keeps_a_moved_record(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    state = RunStatus(observation=ObservationStatus(containerID="c", actions=[action("a:1")]))
    blocked.stash(store, state)
    first = state.model_dump()
    blocked.stash(store, state)
    assert state.model_dump() == first


def test_a_new_monitor_record_resets_the_digest_it_merge_patches_over() -> None:
    """The node monitor's record always carries an empty digest, so its merge patch over
    a moved record never leaves the old digest beside a new listing."""
    shipped = observation_status("c", Observation(container_id="c"), [action("a:1")])
    dumped = shipped.model_dump(mode="json", exclude_none=True)
    assert (dumped["actionsSha256"], dumped["listed"]) == ("", 0)


def test_severity_counts_are_a_bounded_map() -> None:
    many = [action(f"h:{i}", severity=f"s{i % 20}") for i in range(100)]
    counts = blocked.by_severity([*many, action("x:1"), action("y:1", severity="high")])
    assert len(counts) == MAX_SEVERITIES and sum(counts.values()) == 102
    assert "other" in counts
    assert blocked.by_severity([action("x:1"), action("y:1", "high")]) == {"normal": 1, "high": 1}


def test_farm_blocked_names_the_store_when_the_digest_is_not_there(tmp_path: Path) -> None:
    shown = farm(tmp_path / "home", "blocked", "ab" * 32)
    assert shown.returncode == 2
    assert "not in this store" in shown.stderr and "farm-store" in shown.stderr
    bad = farm(tmp_path / "home", "blocked", "nope")
    assert bad.returncode == 2 and "64 hex characters" in bad.stderr

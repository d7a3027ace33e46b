"""A cluster build is judged, reported and signed as a local one: the real node monitor
ships gVisor's classified record into Build status, the real controller waits for it,
applies the Build's observe policy (farm.observe.verdict), withholds the artifacts of a
quarantined build and signs a succeeded one; `farm report`, `farm provenance` and
`farm verify` then run as real processes on the controller's store."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from farm.k8s import blocked, names
from farm.k8s.artifacts import ArtifactServer, Ledger
from farm.k8s.config import ControllerConfig
from farm.k8s.controller import Controller
from farm.k8s.nodemonitor import NodeMonitor
from farm.k8s.reconcile import Reconciler
from farm.metrics import Metrics
from farm.observe.daemon import HostObserver, ObserverDaemon, ObserverPaths
from farm.observe.spool import Observation
from farm.records import Status
from farm.store import Store
from tests.k8s.conftest import NS, RUN_NS, Cluster, clean
from tests.k8s.kubelet import (
    BUILD_CID,
    REVISION,
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
from tests.k8s.test_schemas import build_schema
from tests.k8s.test_status_and_monitor import settle
from tests.unit.test_classify import EVIL_ENV, SCRIPT, cargo_root, ev, inet, step
from tests.unit.test_observe_sink import open_event, peer

BINARY = b"\x7fELF cluster binary"


def evil() -> Observation:
    """gVisor's complete record of a build whose dependency's build script dialled out."""
    events = [
        *cargo_root(),
        *step(7, SCRIPT, [SCRIPT], EVIL_ENV),
        ev("socket", tgid=7, domain=2, type=1, exit={"result": 3}),
        ev("connect", tgid=7, fd=3, address=inet("10.1.2.3", 443), exit={"errorno": 101}),
    ]
    return Observation(container_id=BUILD_CID, events=events, connections=1)


def farm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, on the controller's store."""
    env = {**os.environ, "FARM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args], env=env, capture_output=True, text=True
    )


def record_id(build: dict) -> str:
    return f"{NS}.{build['metadata']['name']}.{names.short_uid(build['metadata']['uid'])}"


#: The source's Cargo.lock: one local package (not listed) and one registry crate.
LOCK = b"""version = 3

[[package]]
name = "app"
version = "0.1.0"

[[package]]
name = "itoa"
version = "1.0.1"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "%s"
""" % (b"1b" * 32)


def run_build(
    cluster: Cluster,
    tmp_path: Path,
    ctl: Controller,
    name: str,
    lock: bytes | None = None,
    **spec: object,
) -> dict:
    """Fetch, build (exit 0), collect one binary (and ``lock`` as /src/Cargo.lock);
    returns the Build as created."""
    build = cluster.api.create("builds", NS, build_manifest(name, **spec))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_pod(
        cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=0, log=b"ok\n"
    )
    cluster.wait_phase(name, "Collecting")
    root = sandbox_tree(tmp_path / name, {"app": BINARY})
    if lock is not None:
        (root / "src" / "Cargo.lock").write_bytes(lock)
    assert run_collector(cluster.api, RUN_NS, build, root) == 0
    return build


def torn_down(cluster: Cluster, name: str) -> dict:
    return wait_for(
        lambda: (b := cluster.api.get("builds", NS, name))["status"].get("tornDown") and b,
        f"teardown of {name}",
    )


def assert_valid(doc: dict) -> None:
    """The status the controller and monitor wrote is what the CRD's schema accepts."""
    jsonschema.validate(doc, build_schema())


def test_a_not_allowed_action_quarantines_and_the_report_blames_its_package(
    cluster: Cluster, tmp_path: Path
) -> None:
    ctl = cluster.controller("a")
    cluster.monitor({BUILD_CID: evil()})
    build = run_build(cluster, tmp_path, ctl, "tainted")

    done = cluster.wait_phase("tainted", "Quarantined")
    status = done["status"]
    assert status["artifacts"] == [] and status["digest"] == "" and status["provenance"] == ""
    assert "1 blocked actions not allowed by policy (by evil)" in status["message"]
    # The actions are in the controller's store, by digest (farm.k8s.blocked).
    assert status["observation"]["actions"] == [] and status["observation"]["listed"] == 1
    [action] = blocked.read(ctl.reconciler.store, status["observation"]["actionsSha256"])
    assert (action.package, action.kind, action.target) == ("evil", "network", "10.1.2.3:443")
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "False"
    assert_valid(done)

    home = ctl.reconciler.store.home
    record = ctl.reconciler.store.get(record_id(build))
    assert record.status is Status.QUARANTINED and record.artifacts == []
    assert record.provenance_sha256 is None
    report = farm(home, "report", record.id)
    assert report.returncode == 0, report.stderr
    assert "evil 0.3.1 (build script): 1 action" in report.stdout
    assert "connect 10.1.2.3:443/tcp" in report.stdout
    assert "QUARANTINED: 1 blocked actions not allowed by policy (by evil)" in report.stdout
    shown = farm(home, "show", record.id)
    assert f"build {record.id}: quarantined" in shown.stdout

    torn_down(cluster, "tainted")
    events = [e for e in cluster.api.list("events", NS) if e["reason"] == "Quarantined"]
    assert [e["type"] for e in events] == ["Warning"]
    sample = ctl.metrics.registry.get_sample_value
    assert sample("farm_builds_total", {"tenant": "default", "result": "quarantined"}) == 1


def test_an_allow_rule_lets_the_same_build_succeed(cluster: Cluster, tmp_path: Path) -> None:
    ctl = cluster.controller("a")
    cluster.monitor({BUILD_CID: evil()})
    rule = {"package": "evil", "role": "build script", "kind": "network"}
    build = run_build(cluster, tmp_path, ctl, "allowed", observe={"allow": [rule]})

    done = cluster.wait_phase("allowed", "Succeeded")
    assert [a["path"] for a in done["status"]["artifacts"]] == ["out/app"]
    record = ctl.reconciler.store.get(record_id(build))
    assert record.status is Status.SUCCEEDED and [a.path for a in record.artifacts] == ["out/app"]
    assert [a["allowed"] for a in record.blocked_actions] == [True]
    assert record.observation.allowed == 1 and record.observation.quarantine_reasons == []
    assert_valid(done)


def test_audit_mode_succeeds_and_records_the_actions(cluster: Cluster, tmp_path: Path) -> None:
    ctl = cluster.controller("a")
    cluster.monitor({BUILD_CID: evil()})
    build = run_build(cluster, tmp_path, ctl, "audited", observe={"mode": "audit"})

    cluster.wait_phase("audited", "Succeeded")
    record = ctl.reconciler.store.get(record_id(build))
    assert record.status is Status.SUCCEEDED and record.observation.mode == "audit"
    assert [(a["package"], a["allowed"]) for a in record.blocked_actions] == [("evil", False)]
    report = farm(ctl.reconciler.store.home, "report", record.id)
    assert "evil 0.3.1 (build script): 1 action" in report.stdout
    assert "QUARANTINED" not in report.stdout


# --- the wait for the node monitor, one reconcile at a time ---------------------------------


@pytest.fixture
def stepped(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Reconciler, str]]:
    """The real Reconciler driven by hand, with its real artifact endpoint."""
    store = Store(tmp_path / "home")
    ledger = Ledger(store)
    metrics = Metrics(CollectorRegistry())
    config = ControllerConfig()
    r = Reconciler(cluster.kube, config, ledger, store, metrics)
    server = ArtifactServer(ledger, "127.0.0.1", 0).start()
    cluster.service(config, server.server_address[1])
    yield r, server.url
    server.stop()


def collected(cluster: Cluster, tmp_path: Path, r: Reconciler, url: str, name: str) -> dict:
    """A Build whose build container exited 0 and whose outputs were uploaded."""
    build = cluster.api.create("builds", NS, build_manifest(name))
    settle(r, name)
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    settle(r, name)
    build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=0)
    settle(r, name)
    assert run_collector(cluster.api, RUN_NS, build, sandbox_tree(tmp_path / name, {})) == 0
    settle(r, name)
    return build


def test_the_controller_keeps_the_pod_until_the_node_monitor_has_reported(
    cluster: Cluster, tmp_path: Path, stepped: tuple[Reconciler, str]
) -> None:
    r, url = stepped
    build = collected(cluster, tmp_path, r, url, "slow-monitor")
    for _ in range(3):  # however often it looks, it waits
        settle(r, "slow-monitor")
    status = cluster.api.get("builds", NS, "slow-monitor")["status"]
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Collecting", "Observing")
    assert [p["metadata"]["name"] for p in owned(cluster.api, RUN_NS, build, "pods")]
    assert not any(m == "DELETE" for m, _ in cluster.api.requests)

    source = Spooled({BUILD_CID: clean()})
    monitor = NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-1")
    assert monitor.scan() == 1
    settle(r, "slow-monitor")
    assert cluster.api.get("builds", NS, "slow-monitor")["status"]["phase"] == "Succeeded"
    settle(r, "slow-monitor")  # and only now the teardown
    assert any(m == "DELETE" for m, _ in cluster.api.requests)


def test_a_monitor_that_never_reports_quarantines_after_the_grace(
    cluster: Cluster, tmp_path: Path, stepped: tuple[Reconciler, str]
) -> None:
    r, url = stepped
    build = collected(cluster, tmp_path, r, url, "unwatched")
    assert cluster.api.get("builds", NS, "unwatched")["status"]["phase"] == "Collecting"
    # The build container ended longer ago than the grace (not waited out: moved back).
    past = datetime.now(UTC) - timedelta(seconds=ControllerConfig().observe_grace_seconds + 1)
    cluster.api.mutate(
        "builds", NS, "unwatched", lambda b: b["status"].update(exitTime=past.isoformat())
    )
    settle(r, "unwatched")

    status = cluster.api.get("builds", NS, "unwatched")["status"]
    assert status["phase"] == "Quarantined" and status["artifacts"] == []
    assert f"the node monitor never reported container {BUILD_CID}" in status["message"]
    record = r.store.get(record_id(build))
    assert record.status is Status.QUARANTINED and not record.observation.complete


# --- provenance through the real CLI --------------------------------------------------------


def test_a_succeeded_cluster_build_verifies_with_the_controllers_key(
    cluster: Cluster, tmp_path: Path
) -> None:
    ctl = cluster.controller("a")
    cluster.monitor()
    build = run_build(cluster, tmp_path, ctl, "signed", lock=LOCK)
    done = cluster.wait_phase("signed", "Succeeded")
    assert_valid(done)
    home, rid = ctl.reconciler.store.home, record_id(build)
    assert done["status"]["provenance"] == ctl.reconciler.store.get(rid).provenance_sha256

    envelope = tmp_path / "signed.intoto.json"
    assert farm(home, "provenance", rid, "--out", str(envelope)).returncode == 0
    statement = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    details = statement["predicate"]["runDetails"]
    assert details["builder"]["id"].startswith("urn:farm:builder:kubernetes:")
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    source = deps["source"]
    # The image as the kubelet resolved it (tests/k8s/kubelet.py reports sha256:abab…).
    assert next(d for n, d in deps.items() if n.startswith("image:"))["digest"] == {
        "sha256": "ab" * 32
    }
    assert source == {
        "name": "source",
        "uri": f"git+https://git.example.test/app.git@{REVISION}",
        "digest": {"gitCommit": REVISION},
    }
    # The crates of the Cargo.lock the collector uploaded, as a local build lists them.
    assert deps["itoa"]["uri"] == "pkg:cargo/itoa@1.0.1"
    assert deps["itoa"]["digest"] == {"sha256": "1b" * 32} and "app" not in deps
    assert farm(home, "artifacts", rid, "--dest", str(tmp_path / "got")).returncode == 0
    artifact = tmp_path / "got" / "out" / "app"
    ok = farm(
        home, "verify", str(artifact), "--provenance", str(envelope), "--require", "no-network"
    )
    assert ok.returncode == 0, ok.stderr
    assert "requirement no-network: observed, no network attempts" in ok.stdout

    artifact.write_bytes(BINARY + b"tampered")
    bad = farm(home, "verify", str(artifact), "--provenance", str(envelope))
    assert bad.returncode == 1 and "is not a subject of this provenance" in bad.stderr


def test_an_unobserved_audit_build_is_signed_but_fails_no_network(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Audit mode lets a build without the monitor's record succeed; its provenance says
    the record is incomplete, so a consumer requiring no-network refuses it."""
    ctl = cluster.controller("a", ControllerConfig(observe_grace_seconds=1))
    build = run_build(cluster, tmp_path, ctl, "blind", observe={"mode": "audit"})
    cluster.wait_phase("blind", "Succeeded")
    home, rid = ctl.reconciler.store.home, record_id(build)
    assert not ctl.reconciler.store.get(rid).observation.complete

    envelope = tmp_path / "blind.intoto.json"
    assert farm(home, "provenance", rid, "--out", str(envelope)).returncode == 0
    assert farm(home, "artifacts", rid, "--dest", str(tmp_path / "got")).returncode == 0
    artifact = tmp_path / "got" / "out" / "app"
    assert farm(home, "verify", str(artifact), "--provenance", str(envelope)).returncode == 0
    refused = farm(
        home, "verify", str(artifact), "--provenance", str(envelope), "--require", "no-network"
    )
    assert refused.returncode == 1 and "requirement no-network not met" in refused.stderr


# --- records the controller must not take for complete -------------------------------------


def test_a_record_cut_by_stopping_the_monitor_is_incomplete_and_quarantines(
    cluster: Cluster, tmp_path: Path, stepped: tuple[Reconciler, str]
) -> None:
    """The monitor's observer is stopped (a restart or rollout) while the build's
    sandbox runs: gVisor's connection is cut, not finished, so the restarted monitor's
    record is incomplete and enforce mode quarantines the build."""
    r, url = stepped
    with tempfile.TemporaryDirectory(prefix="farm-cut-") as d:
        paths = ObserverPaths(socket=Path(d) / "observer.sock", spool=Path(d) / "spool")
        daemon = ObserverDaemon(paths).start()
        with peer(paths.socket) as runsc:
            assert runsc.recv(100) == b"\x08\x01"
            runsc.send(open_event("/src/main.rs", container=BUILD_CID))
            wait_for(lambda: list(paths.spool.glob(f"{BUILD_CID}.*.part")), "the spool")
            daemon.close()  # the monitor's pod stops, with runsc's connection still open
        build = collected(cluster, tmp_path, r, url, "rolled")
        with ObserverDaemon(paths):  # the restarted monitor
            source = HostObserver(paths, collect_timeout=5)
            monitor = NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-1")
            assert monitor.scan() == 1
    shipped = cluster.api.get("builds", NS, "rolled")["status"]["observation"]
    assert shipped["complete"] is False and "observer was stopped" in shipped["problem"]
    assert shipped["events"] == 1  # what was seen before the cut is still reported

    settle(r, "rolled")
    status = cluster.api.get("builds", NS, "rolled")["status"]
    assert status["phase"] == "Quarantined" and status["artifacts"] == []
    record = r.store.get(record_id(build))
    assert record.status is Status.QUARANTINED and not record.observation.complete


def test_only_the_monitor_of_the_build_pods_node_is_believed(
    cluster: Cluster, tmp_path: Path, stepped: tuple[Reconciler, str]
) -> None:
    """A monitor elsewhere (misconfigured, or compromised: every monitor may patch every
    Build's status) reports the build clean; the controller ignores it, says so, and
    waits for the monitor of the node the pod ran on (tests/k8s/kubelet.py: node-1)."""
    r, url = stepped
    collected(cluster, tmp_path, r, url, "vouched")
    [pod] = [p for p in cluster.api.list("pods", RUN_NS) if p["spec"]["nodeName"] == "node-1"]
    elsewhere = Spooled({BUILD_CID: clean()})
    liar = NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), elsewhere, "node-2")
    liar.report(pod, BUILD_CID)  # as a monitor that ignores its own node's selector would

    settle(r, "vouched")
    status = cluster.api.get("builds", NS, "vouched")["status"]
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Collecting", "Observing")
    assert "ignored a record from the node monitor of node-2" in status["message"]

    source = Spooled({BUILD_CID: evil()})
    assert NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-1").scan() == 1
    settle(r, "vouched")
    status = cluster.api.get("builds", NS, "vouched")["status"]
    assert status["phase"] == "Quarantined"  # node-1's record, with the connect in it
    assert status["observation"]["nodeName"] == "node-1"


def test_a_record_only_from_another_node_times_out_as_incomplete(
    cluster: Cluster, tmp_path: Path, stepped: tuple[Reconciler, str]
) -> None:
    r, url = stepped
    collected(cluster, tmp_path, r, url, "stray")
    [pod] = cluster.api.list("pods", RUN_NS)
    source = Spooled({BUILD_CID: clean()})
    NodeMonitor(cluster.kube, Metrics(CollectorRegistry()), source, "node-2").report(pod, BUILD_CID)
    past = datetime.now(UTC) - timedelta(seconds=ControllerConfig().observe_grace_seconds + 1)
    cluster.api.mutate(
        "builds", NS, "stray", lambda b: b["status"].update(exitTime=past.isoformat())
    )
    settle(r, "stray")
    status = cluster.api.get("builds", NS, "stray")["status"]
    assert status["phase"] == "Quarantined"
    assert "ignored a record from the node monitor of node-2" in status["message"]

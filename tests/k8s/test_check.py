"""A Build's ``spec.check``: N varied build Jobs, each collected with its own token and
observed by the real node monitor, judged, then compared by farm.reprocheck's verdict
exactly as ``farm build --check`` compares local runs; `farm verify --require
reproducible` runs as a real process on the controller's store."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.k8s import names
from farm.k8s.controller import Controller
from farm.records import Status
from tests.k8s.conftest import NS, RUN_NS, Cluster, clean
from tests.k8s.kubelet import (
    build_manifest,
    build_pod,
    finish_job,
    job,
    run_cid,
    run_collector,
    sandbox_tree,
    wait_for,
)
from tests.k8s.test_controller import leftovers, reasons
from tests.k8s.test_observation import (
    BINARY,
    assert_valid,
    evil,
    farm,
    record_id,
    torn_down,
)


def checked(
    cluster: Cluster, tmp_path: Path, ctl: Controller, name: str, outputs: list[dict[str, bytes]]
) -> dict:
    """A Build with check N = len(outputs): fetch, then run k exits 0 and uploads
    ``outputs[k]``; returns the Build as created."""
    build = cluster.api.create("builds", NS, build_manifest(name, check=len(outputs)))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    for run in range(len(outputs)):
        role = names.run_role("build", run)
        build_pod(
            cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, role), exit_code=0, log=b"ok\n"
        )
    cluster.wait_phase(name, "Collecting")
    for run, files in enumerate(outputs):
        root = sandbox_tree(tmp_path / name / str(run), files)
        assert run_collector(cluster.api, RUN_NS, build, root, run) == 0
    return build


def verify(cluster: Cluster, ctl: Controller, tmp_path: Path, rid: str) -> tuple[int, str]:
    """`farm verify out/app --require reproducible` against the build's own provenance."""
    home = ctl.reconciler.store.home
    envelope = tmp_path / f"{rid}.intoto.json"
    assert farm(home, "provenance", rid, "--out", str(envelope)).returncode == 0
    got = tmp_path / f"{rid}-artifacts"
    assert farm(home, "artifacts", rid, "--dest", str(got)).returncode == 0
    done = farm(
        home,
        "verify",
        str(got / "out" / "app"),
        "--provenance",
        str(envelope),
        "--require",
        "reproducible",
    )
    return done.returncode, done.stdout + done.stderr


def run1_id(build: dict) -> str:
    return f"{NS}.{build['metadata']['name']}.run1-{names.short_uid(build['metadata']['uid'])}"


def counted(ctl: Controller, result: str) -> float:
    """The check's count once the controller has made it: it counts just after it writes
    the finished status (a 409 there redoes the step), so a test that saw the phase may
    look a moment before."""
    return wait_for(lambda: repro_checks(ctl, result), f"a {result} check counted")


def repro_checks(ctl: Controller, result: str) -> float | None:
    labels = {"tenant": "default", "result": result}
    return ctl.metrics.registry.get_sample_value("farm_reproducibility_checks_total", labels)


def test_two_identical_runs_are_reproducible_and_verify_says_so(
    cluster: Cluster, tmp_path: Path
) -> None:
    ctl = cluster.controller("a")
    cluster.monitor({run_cid(k): clean(run_cid(k)) for k in range(2)})
    build = checked(cluster, tmp_path, ctl, "twice", [{"app": BINARY}, {"app": BINARY}])

    done = cluster.wait_phase("twice", "Succeeded")
    status = done["status"]
    assert status["reproducible"] is True and status["differing"] == []
    assert status["checkRuns"]["1"]["observation"]["containerID"] == run_cid(1)
    assert [a["path"] for a in status["artifacts"]] == ["out/app"]
    assert_valid(done)
    rid = record_id(build)
    record = ctl.reconciler.store.get(rid)
    assert record.reproducibility.result == "reproducible"
    assert record.reproducibility.builds == [rid, run1_id(build)]
    assert "wall clock" not in " ".join(record.reproducibility.variations)
    other = ctl.reconciler.store.get(run1_id(build))
    assert f"check run 2 of 2 for build {rid}" in other.notes
    code, said = verify(cluster, ctl, tmp_path, rid)
    assert code == 0 and "verified 2x reproducible" in said, said
    assert counted(ctl, "reproducible") == 1

    torn_down(cluster, "twice")
    assert leftovers(cluster, build) == {}  # both runs' Jobs, pods, Secrets and policies


def test_runs_that_differ_are_unreproducible_and_verify_refuses(
    cluster: Cluster, tmp_path: Path
) -> None:
    ctl = cluster.controller("a")
    cluster.monitor({run_cid(k): clean(run_cid(k)) for k in range(2)})
    same = {"lib.txt": b"same"}
    outputs = [{"app": BINARY, **same}, {"app": BINARY + b" built at 12:00", **same}]
    build = checked(cluster, tmp_path, ctl, "drifts", outputs)

    done = cluster.wait_phase("drifts", "Failed")
    status = done["status"]
    assert status["reproducible"] is False and status["differing"] == ["out/app"]
    assert "NOT reproducible across 2 runs: out/app differ" in status["message"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Succeeded"] == "Unreproducible"
    assert_valid(done)
    # As a local `--check` mismatch: the build itself succeeded and is signed, with the
    # verdict in its provenance, so a consumer requiring reproducibility refuses it.
    rid = record_id(build)
    record = ctl.reconciler.store.get(rid)
    assert record.status is Status.SUCCEEDED and record.reproducibility.differing == ["out/app"]
    code, said = verify(cluster, ctl, tmp_path, rid)
    assert code == 1 and "requirement reproducible not met" in said, said
    events = [e for e in cluster.api.list("events", NS) if e["reason"] == "Unreproducible"]
    assert [e["type"] for e in events] == ["Warning"]
    assert counted(ctl, "unreproducible") == 1
    torn_down(cluster, "drifts")
    assert leftovers(cluster, build) == {}


@pytest.mark.parametrize("runs", [1, 11])
def test_an_invalid_check_fails_before_anything_is_created(cluster: Cluster, runs: int) -> None:
    cluster.controller("a")
    build = cluster.api.create("builds", NS, build_manifest("bad-check", check=runs))
    failed = cluster.wait_phase("bad-check", "Failed")
    assert f"check: give between 2 and 10 runs (not {runs})" in failed["status"]["message"]
    assert failed["status"]["conditions"][0]["reason"] == "InvalidSpec"
    assert leftovers(cluster, build) == {}
    # The Event follows the status write that records the failure.
    wait_for(lambda: "InvalidSpec" in reasons(cluster, build), "the InvalidSpec Event")


def test_a_quarantined_check_run_quarantines_the_build(cluster: Cluster, tmp_path: Path) -> None:
    ctl = cluster.controller("a")
    tainted = evil().model_copy(update={"container_id": run_cid(1)})
    cluster.monitor({run_cid(0): clean(), run_cid(1): tainted})
    build = checked(cluster, tmp_path, ctl, "half-evil", [{"app": BINARY}, {"app": BINARY}])

    done = cluster.wait_phase("half-evil", "Quarantined")
    status = done["status"]
    assert status["message"].startswith("run 1: 1 blocked actions not allowed by policy")
    assert status["artifacts"] == [] and status["provenance"] == ""
    assert status.get("reproducible") is None
    assert_valid(done)
    record = ctl.reconciler.store.get(record_id(build))
    assert record.status is Status.QUARANTINED and record.artifacts == []
    assert record.provenance_sha256 is None and record.reproducibility.result == "error"
    run1 = ctl.reconciler.store.get(run1_id(build))
    assert run1.status is Status.QUARANTINED and run1.blocked_actions[0]["package"] == "evil"
    assert counted(ctl, "error") == 1
    torn_down(cluster, "half-evil")
    assert leftovers(cluster, build) == {}


def test_a_failed_check_run_fails_the_build_as_a_local_check_does(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Run 1 exits 1: the Build fails naming that run; run 0 succeeded, so (as with a
    local `--check` whose second run failed) its record is signed with the verdict
    "error", which `--require reproducible` refuses."""
    ctl = cluster.controller("a")
    cluster.monitor({run_cid(k): clean(run_cid(k)) for k in range(2)})
    build = cluster.api.create("builds", NS, build_manifest("flaky", check=2))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=0)
    build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build-1"), exit_code=1)
    cluster.wait_phase("flaky", "Collecting")
    root = sandbox_tree(tmp_path / "flaky", {"app": BINARY})
    assert run_collector(cluster.api, RUN_NS, build, root) == 0

    done = cluster.wait_phase("flaky", "Failed")
    assert done["status"]["message"] == "run 1: the build exited with status 1"
    assert done["status"].get("reproducible") is None
    assert_valid(done)
    record = ctl.reconciler.store.get(record_id(build))
    assert record.status is Status.SUCCEEDED and record.reproducibility.result == "error"
    code, said = verify(cluster, ctl, tmp_path, record_id(build))
    assert code == 1 and "requirement reproducible not met" in said, said
    assert counted(ctl, "error") == 1

"""The normalised environment, the check's variations and verdict, and diffoscope's report."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.diffoscope import compare
from farm.epoch import commit_epoch
from farm.errors import SpecError
from farm.policy import BuildDirs, baseline_env, sandbox_for
from farm.records import Artifact, BuildRecord, Status
from farm.reprocheck import variation, verdict
from farm.runner import resolve
from farm.settings import Settings
from farm.spec import build_spec


def test_source_date_epoch_comes_from_the_last_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "crate").mkdir(parents=True)
    (repo / "crate" / "main.rs").write_text("fn main() {}")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    dates = {"GIT_COMMITTER_DATE": "@1600000000 +0000", "GIT_AUTHOR_DATE": "@1500000000 +0000"}
    env = {**os.environ, **dates}
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True, env=env)
    assert commit_epoch(repo / "crate") == 1_600_000_000
    assert commit_epoch(tmp_path) is None  # not a git tree
    spec = resolve(build_spec({"source": str(repo / "crate"), "argv": ["true"]}))
    assert spec.source_date_epoch == 1_600_000_000
    assert baseline_env(spec)["SOURCE_DATE_EPOCH"] == "1600000000"
    pinned = resolve(build_spec({"source": str(repo), "argv": ["true"], "source_date_epoch": 7}))
    assert pinned.source_date_epoch == 7  # the spec wins over git


def test_baseline_env_normalises_cargo(tmp_path: Path) -> None:
    spec = build_spec({"source": str(tmp_path), "env": {"RUSTFLAGS": "-C opt-level=1"}})
    env = baseline_env(spec)
    assert env["CARGO_INCREMENTAL"] == "0" and env["TZ"] == "UTC"
    assert env["RUSTFLAGS"].startswith("-C opt-level=1 --remap-path-prefix=/src=")
    with pytest.raises(SpecError, match="CARGO_INCREMENTAL is set by farm"):
        build_spec({"source": str(tmp_path), "env": {"CARGO_INCREMENTAL": "1"}})


def test_check_runs_vary_hostname_env_order_and_jobs(tmp_path: Path) -> None:
    spec = build_spec({"source": str(tmp_path), "argv": ["true"]})
    base = sandbox_for(spec, "id", BuildDirs(tmp_path / "w"), Settings(home=tmp_path))
    assert variation(0) is None
    one, two = variation(1)(base), variation(2)(base)
    assert (base.hostname, one.hostname, two.hostname) == (
        "farm-build",
        "farm-check-1",
        "farm-check-2",
    )
    order = list(one.env)
    assert order == ["CARGO_BUILD_JOBS", *reversed(base.env)]
    assert (one.env["CARGO_BUILD_JOBS"], two.env["CARGO_BUILD_JOBS"]) == ("1", "3")
    assert one.mounts == base.mounts and one.argv == base.argv  # nothing else changes


def record(build_id: str, status: Status = Status.SUCCEEDED, **shas: str) -> BuildRecord:
    return BuildRecord(
        id=build_id,
        status=status,
        tenant="t",
        image="i",
        runtime="runsc",
        spec={},
        created_at=datetime.now(UTC),
        artifacts=[Artifact(path=f"out/{p}", sha256=s, size=1) for p, s in shas.items()],
    )


def test_verdict_names_what_differs() -> None:
    same = verdict([record("a", x="1", y="2"), record("b", x="1", y="2")], 2)
    assert same.reproducible and same.result == "reproducible" and same.differing == []
    assert "verified 2\u00d7 reproducible on" in same.line()
    differ = verdict([record("a", x="1", y="2"), record("b", x="1", y="3", z="4")], 2)
    assert differ.result == "unreproducible" and differ.differing == ["out/y", "out/z"]
    failed = verdict([record("a", x="1"), record("b", Status.FAILED)], 2)
    assert failed.result == "error" and not failed.reproducible
    short = verdict([record("a", Status.FAILED)], 2)  # the check stopped after run 1
    assert short.result == "error" and short.builds == ["a"]


def test_diffoscope_reports_the_difference_without_running_anything(tmp_path: Path) -> None:
    canary = tmp_path / "ran"
    left, right = tmp_path / "left.sh", tmp_path / "right.sh"
    left.write_text(f"#!/bin/sh\ntouch {canary}\necho 1700000000\n")
    right.write_text(f"#!/bin/sh\ntouch {canary}\necho 1795944686\n")
    report = compare(("run-a", {"out/stamp": left}), ("run-b", {"out/stamp": right})).decode()
    assert "run-a/out/stamp" in report and "run-b/out/stamp" in report
    assert "-echo 1700000000" in report and "+echo 1795944686" in report
    assert not canary.exists()

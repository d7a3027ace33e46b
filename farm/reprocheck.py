"""``farm build --check N``: run a build in N independent sandboxes, each deliberately
different, and compare what they produced.

Callers: ``farm.buildflow`` (the CLI's and later the service's path to a build). In the
spirit of reprotest, run k > 0 varies, against run 0:

- hostname: ``farm-check-<k>`` instead of ``farm-build``;
- environment order: reversed on odd runs (the same variables, another order);
- parallel jobs: ``CARGO_BUILD_JOBS`` 1 on run 1, k+1 on later runs (run 0: cargo's default);
- wall clock: the runs are sequential, so each starts later; SOURCE_DATE_EPOCH is fixed.

Not varied, because farm fixes them for every build (docs/reproducibility.md): the build
path, umask 022, TZ/locale, user, and the source snapshot's order, mtimes and owners.
On a mismatch, diffoscope's report on the first differing pair becomes an artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from farm import diffoscope
from farm.errors import InputError
from farm.records import Artifact, BuildRecord, ReproVerdict, Status
from farm.sandbox import SandboxSpec
from farm.spec import BuildSpec
from farm.store import Store

if TYPE_CHECKING:  # types only: the cache (a hit) reads REPORT_PATH without the runner
    from farm.metrics import Metrics
    from farm.runner import Runner

#: What ``variation`` changes: the same wherever the runs are sandboxed (a cluster's
#: check runs, farm.k8s.reconcile, get these too).
SANDBOX_VARIATIONS = ["hostname", "environment order", "parallel jobs (CARGO_BUILD_JOBS)"]
#: Local runs are sequential, so each also starts later; a cluster's run in parallel.
VARIATIONS = [*SANDBOX_VARIATIONS, "wall clock (sequential runs; SOURCE_DATE_EPOCH fixed)"]
MAX_RUNS = 10
REPORT_PATH = "check/diffoscope.txt"


def check_problem(runs: int) -> str | None:
    """Why ``runs`` is not a valid number of check runs (0 means no check), or None.
    Local ``--check``, ``farm serve``'s option and a Build's ``spec.check`` share it."""
    if runs and not 2 <= runs <= MAX_RUNS:
        return f"give between 2 and {MAX_RUNS} runs"
    return None


def validate_check(runs: int) -> None:
    problem = check_problem(runs)
    if problem:
        raise InputError(f"--check {runs}: {problem}")


def variation(index: int) -> Callable[[SandboxSpec], SandboxSpec] | None:
    """How run ``index`` differs from run 0 (which runs with the plain policy)."""
    if index == 0:
        return None

    def vary(sandbox: SandboxSpec) -> SandboxSpec:
        jobs = 1 if index == 1 else index + 1
        env = {**sandbox.env, "CARGO_BUILD_JOBS": str(jobs)}
        if index % 2:
            env = dict(reversed(env.items()))
        return sandbox.model_copy(update={"hostname": f"farm-check-{index}", "env": env})

    return vary


def check(
    runner: Runner,
    spec: BuildSpec,
    runs: int,
    *,
    build_id: str | None = None,
    metrics: Metrics | None = None,
) -> BuildRecord:
    """Build ``runs`` times; return the first build's record carrying the verdict.

    Run 0 gets ``build_id`` (a queue's id) if given. Stops at the first run that does
    not succeed (the verdict is then "error").
    """
    records: list[BuildRecord] = []
    for index in range(runs):
        records.append(runner.build(spec, build_id if index == 0 else None, vary=variation(index)))
        if records[-1].status is not Status.SUCCEEDED:
            break
    primary = records[0]
    primary.reproducibility = verdict(records, runs)
    _quarantine_with_runs(primary, records[1:])
    if primary.reproducibility.result == "unreproducible":
        _attach_report(runner.store, primary, records)
    for index, other in enumerate(records[1:], start=1):
        other.notes.append(f"check run {index + 1} of {runs} for build {primary.id}")
        runner.store.save(other)
    primary.notes.append(primary.reproducibility.line())
    runner.store.save(primary)
    if metrics:
        metrics.repro_checks.labels(spec.tenant, primary.reproducibility.result).inc()
    return primary


def _quarantine_with_runs(primary: BuildRecord, others: list[BuildRecord]) -> None:
    """A dependency that misbehaves only under some variation (another hostname, more
    jobs) must not get run 0's artifacts out: a quarantined run quarantines the build,
    as on a cluster (farm.k8s.reconcile)."""
    held = next((r for r in others if r.status is Status.QUARANTINED), None)
    if held is None or primary.status is not Status.SUCCEEDED:
        return
    primary.status = Status.QUARANTINED
    primary.artifacts = []  # withheld, as for a quarantined single build
    primary.notes.append(
        f"quarantined (enforce mode): check run {held.id} was quarantined; artifacts "
        f"withheld; see `farm report {held.id}`"
    )


def verdict(
    records: list[BuildRecord], runs: int, variations: list[str] = VARIATIONS
) -> ReproVerdict:
    """Compare the runs' artifacts by path and digest (run 0's record first).
    ``variations`` says how the runs differed, for the record."""
    maps = [{a.path: a.sha256 for a in r.artifacts} for r in records]
    paths = sorted(set().union(*maps))
    differing = [p for p in paths if len({m.get(p) for m in maps}) > 1]
    complete = len(records) == runs and all(r.status is Status.SUCCEEDED for r in records)
    result = "error" if not complete else "unreproducible" if differing else "reproducible"
    return ReproVerdict(
        reproducible=result == "reproducible",
        result=result,
        runs=runs,
        builds=[r.id for r in records],
        variations=list(variations),
        differing=differing,
        checked_at=datetime.now(UTC),
    )


def _attach_report(store: Store, primary: BuildRecord, records: list[BuildRecord]) -> None:
    """Run diffoscope on run 0 against the first run that differs; keep its report."""
    verdict_ = primary.reproducibility
    assert verdict_ is not None
    base = {a.path: a.sha256 for a in primary.artifacts}
    other = next(r for r in records[1:] if {a.path: a.sha256 for a in r.artifacts} != base)
    if not diffoscope.available():
        primary.notes.append("diffoscope is not installed (run `farm host setup`): no report")
        return
    wanted = set(verdict_.differing)
    report = diffoscope.compare(
        (primary.id, _files(store, primary, wanted)), (other.id, _files(store, other, wanted))
    )
    sha, size = store.put_bytes(report)
    verdict_.diffoscope_sha256 = sha
    primary.artifacts.append(Artifact(path=REPORT_PATH, sha256=sha, size=size))
    primary.notes.append(f"diffoscope report of {primary.id} against {other.id}: {REPORT_PATH}")


def _files(store: Store, record: BuildRecord, paths: set[str]) -> dict[str, Path]:
    return {a.path: store.blob_path(a.sha256) for a in record.artifacts if a.path in paths}

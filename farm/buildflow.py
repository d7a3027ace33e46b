"""One build as the user asked for it: the verified cache, the build or its
reproducibility check, then the cache offer and signed provenance.

Callers: ``farm.cli`` (``farm build``); the service should call ``run_build`` too, with
its own ``Metrics``. ``Runner.build`` stays the single-sandbox primitive underneath.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from farm.cache import Cache, cache_key, uncacheable_reason
from farm.errors import InputError
from farm.metrics import Metrics
from farm.policy import BuildDirs, sandbox_for
from farm.provenance import attest
from farm.records import BuildRecord, Status
from farm.reprocheck import MAX_RUNS, check
from farm.runner import Runner, resolve
from farm.snapshot import digest
from farm.spec import BuildSpec


@dataclass
class Outcome:
    record: BuildRecord
    cached: bool = False
    #: Lines for the user: where the result came from, and why it was not cached.
    said: list[str] = field(default_factory=list)


def validate_check(runs: int) -> None:
    if runs and not 2 <= runs <= MAX_RUNS:
        raise InputError(f"--check {runs}: give between 2 and {MAX_RUNS} runs")


def run_build(
    runner: Runner,
    spec: BuildSpec,
    *,
    check_runs: int = 0,
    use_cache: bool = True,
    metrics: Metrics | None = None,
) -> Outcome:
    """Serve ``spec`` from the cache if a clean result exists, else build (N times with
    ``check_runs``), attest and offer the result to the cache."""
    validate_check(check_runs)
    spec = resolve(spec)
    cache = Cache(runner.settings.home, runner.store)
    if use_cache:
        hit = cache.lookup(_key(runner, spec, digest(spec.source), None), min_runs=check_runs)
        _count(metrics, "hit" if hit else "miss")
        if hit:
            return Outcome(hit, cached=True, said=[hit_line(hit)])
    else:
        _count(metrics, "bypass")
    record = check(runner, spec, check_runs, metrics=metrics) if check_runs else runner.build(spec)
    outcome = Outcome(record)
    if record.status is Status.SUCCEEDED:
        attest(record, spec, runner.store, runner.settings.home)
    reason = uncacheable_reason(record)
    if reason is None and record.source_digest and record.image_id:
        # Keyed by what was actually snapshotted and run, not by the lookup's view.
        cache.offer(_key(runner, spec, record.source_digest, record.image_id), record)
    elif reason:
        outcome.said.append(f"not cached: {reason}")
    return outcome


def hit_line(record: BuildRecord) -> str:
    verdict = record.reproducibility
    when = f"{record.created_at:%Y-%m-%d %H:%M} UTC"
    if verdict and verdict.reproducible:
        return f"cached: {verdict.line()} (build {record.id})"
    return f"cached: build {record.id} of {when} (not checked; `--check 2` verifies it)"


def _key(runner: Runner, spec: BuildSpec, source_digest: str, image_id: str | None) -> str:
    sandbox = sandbox_for(spec, "cache-key", BuildDirs(Path("/nonexistent")), runner.settings)
    # preflight raises before anything is created when the image or runtime is missing.
    image = image_id or runner.backend.preflight(sandbox)
    return cache_key(
        spec,
        sandbox,
        source_digest=source_digest,
        image_id=image,
        runtime=runner.settings.effective_runtime,
    )


def _count(metrics: Metrics | None, result: str) -> None:
    if metrics:
        metrics.cache_requests.labels(result).inc()

"""One build as the user asked for it: the verified cache, the build or its
reproducibility check, then the cache offer and signed provenance.

Callers: ``farm.cli`` (``farm build``) and ``farm.service`` (each queued build, with the
queue's build id and the service's ``Metrics``); ``farm.api`` takes a request's
``BuildOptions`` apart from its spec. ``Runner.build`` stays the single-sandbox
primitive underneath.

A cache hit is the common rebuild, so ``look_up`` needs no ``Runner``: this module
imports the sandbox machinery (farm.runner, its fetch phase, observer, layers, checks)
only on a miss, and the CLI serves a hit without it (tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from farm.admission import check_local_image
from farm.cache import Cache, cache_key, uncacheable_reason
from farm.errors import InputError
from farm.policy import BuildDirs, sandbox_for
from farm.records import BuildRecord, Status
from farm.reprocheck import MAX_RUNS, validate_check
from farm.sandbox import Backend
from farm.settings import Settings
from farm.snapshot import digest
from farm.spec import BuildSpec
from farm.specdefaults import resolve
from farm.store import Store

if TYPE_CHECKING:  # types only: imported for real on a miss (see the module docstring)
    from farm.metrics import Metrics
    from farm.runner import Runner


@dataclass
class Outcome:
    record: BuildRecord
    cached: bool = False
    #: Lines for the user: where the result came from, and why it was not cached.
    said: list[str] = field(default_factory=list)


class BuildOptions(BaseModel):
    """How to run a spec, as opposed to what it builds: not part of the spec (or the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: int = Field(0, ge=0, le=MAX_RUNS, description="runs of a reproducibility check")
    no_cache: bool = False
    #: ``farm serve``: resolve the lock against the operator's mirror (farm serve
    #: --resolve-mirror) first. A yes or no, never a path: a tenant names no directory.
    resolve_lock: bool = Field(False, strict=True)


#: Request fields (``farm serve``'s POST /v1/builds) that are options, not spec fields;
#: the queue keeps them in the stored spec under OPTIONS_KEY.
OPTION_FIELDS = ("check", "no_cache", "resolve_lock")
OPTIONS_KEY = "farm_options"


def take_options(data: dict[str, Any]) -> BuildOptions:
    """Remove the option fields from a request body (or stored spec) and validate them.

    Raises InputError naming the bad field.
    """
    raw = data.pop(OPTIONS_KEY, None) or {f: data.pop(f) for f in OPTION_FIELDS if f in data}
    try:
        options = BuildOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        raise InputError(f"{where}: {err['msg']}") from None
    validate_check(options.check)
    return options


@dataclass
class Looked:
    """A cache lookup: the resolved spec, and the outcome when it was a hit."""

    spec: BuildSpec
    hit: Outcome | None = None


def look_up(
    settings: Settings,
    store: Store,
    backend: Backend,
    spec: BuildSpec,
    *,
    within: Path | None = None,
    build_id: str | None = None,
    check_runs: int = 0,
    use_cache: bool = True,
    metrics: Metrics | None = None,
    use_layer: bool = False,
) -> Looked:
    """Resolve ``spec`` and serve it from the cache if a clean result exists: the key
    (source digest, image id: one backend lookup), the entry, its re-hashed artifacts
    and signed provenance (farm.cache). Creates nothing but the hit's record.

    Raises NotAdmittedError, before anything else, for an image the host does not allow.
    """
    # Before the cache too: a result built from an image no longer allowed is not served.
    check_local_image(settings, spec)
    started = time.monotonic()
    spec = resolve(spec, within=within)
    if not use_cache:
        _count(metrics, "bypass")
        return Looked(spec)
    source_digest = digest(spec.source, max_bytes=spec.resources.disk, within=within)
    key = _key(settings, spec, source_digest, _image_id(backend, spec, settings))
    # A plain build is never served a layered result; a --layer build may be served
    # either (docs/layers.md).
    hit = Cache(settings.home, store).lookup(key, min_runs=check_runs, layered_ok=use_layer)
    _count(metrics, "hit" if hit else "miss")
    if not hit:
        return Looked(spec)
    said = hit_line(hit)
    if build_id:
        hit = _record_hit(store, hit, build_id, said, time.monotonic() - started)
    return Looked(spec, Outcome(hit, cached=True, said=[said]))


def run_build(
    runner: Runner,
    spec: BuildSpec,
    *,
    build_id: str | None = None,
    check_runs: int = 0,
    use_cache: bool = True,
    metrics: Metrics | None = None,
    use_layer: bool = False,
    looked: Looked | None = None,
) -> Outcome:
    """Serve ``spec`` from the cache if a clean result exists, else build (N times with
    ``check_runs``), attest and offer the result to the cache.

    ``build_id`` is the queue's id for this request: the build's record gets it, and a
    cache hit is recorded under it as a copy naming the original in ``cached_from``.
    ``use_layer`` starts the build from the project's dependency layer (farm.layers),
    never for a ``check_runs`` build (always cold) or without the cache (``--no-cache``).
    ``looked``: the caller's own ``look_up`` of this spec, a miss (the CLI looks up
    before it makes a runner), so it is not looked up twice.
    Raises NotAdmittedError, before anything else, for an image the host does not allow.
    """
    validate_check(check_runs)
    if looked is None:
        looked = look_up(
            runner.settings,
            runner.store,
            runner.backend,
            spec,
            within=runner.within(spec),
            build_id=build_id,
            check_runs=check_runs,
            use_cache=use_cache,
            metrics=metrics,
            use_layer=use_layer,
        )
    if looked.hit:
        return looked.hit
    return _build(runner, looked.spec, build_id, check_runs, use_cache, metrics, use_layer)


def _build(
    runner: Runner,
    spec: BuildSpec,
    build_id: str | None,
    check_runs: int,
    use_cache: bool,
    metrics: Metrics | None,
    use_layer: bool,
) -> Outcome:
    from farm.layers.flow import build_with_layer
    from farm.provenance import attest
    from farm.reprocheck import check

    said: list[str] = []
    if check_runs:
        record = check(runner, spec, check_runs, build_id=build_id, metrics=metrics)
    elif layered(check_runs=check_runs, use_cache=use_cache, use_layer=use_layer):
        record, said = build_with_layer(runner, spec, build_id)
    else:
        record = runner.build(spec, build_id)
    outcome = Outcome(record, said=said)
    if record.status is Status.SUCCEEDED:
        attest(record, spec, runner.store, runner.settings.home)
    reason = uncacheable_reason(record)
    if reason is None and record.source_digest and record.image_id:
        # Keyed by what was actually snapshotted and run, not by the lookup's view.
        cache = Cache(runner.settings.home, runner.store)
        cache.offer(_key(runner.settings, spec, record.source_digest, record.image_id), record)
    elif reason:
        outcome.said.append(f"not cached: {reason}")
    return outcome


def layered(*, check_runs: int, use_cache: bool, use_layer: bool) -> bool:
    """Whether a build starts from a dependency layer: only when asked, never for a
    reproducibility check (its runs are always cold, so a layer cannot hide a
    difference) and never with the cache bypassed (``--no-cache`` builds from nothing)."""
    return use_layer and use_cache and not check_runs


def hit_line(record: BuildRecord) -> str:
    verdict = record.reproducibility
    when = f"{record.created_at:%Y-%m-%d %H:%M} UTC"
    if verdict and verdict.reproducible:
        return f"cached: {verdict.line()} (build {record.id})"
    return f"cached: build {record.id} of {when} (not checked; `--check 2` verifies it)"


def _record_hit(
    store: Store, hit: BuildRecord, build_id: str, said: str, seconds: float
) -> BuildRecord:
    now = datetime.now(UTC)
    copy = hit.model_copy(
        update={
            "id": build_id,
            "cached_from": hit.id,
            "created_at": now,
            "finished_at": now,
            "duration_seconds": round(seconds, 3),
            "container_id": None,
            "owner_pid": None,
            "teardown": [],
            "notes": [said],
        }
    )
    store.save(copy)
    return copy


def _key(settings: Settings, spec: BuildSpec, source_digest: str, image_id: str) -> str:
    sandbox = sandbox_for(spec, "cache-key", BuildDirs(Path("/nonexistent")), settings)
    return cache_key(
        spec,
        sandbox,
        source_digest=source_digest,
        image_id=image_id,
        runtime=settings.effective_runtime,
    )


def _image_id(backend: Backend, spec: BuildSpec, settings: Settings) -> str:
    """The image's id for the key, in one backend lookup (a hit runs no sandbox, so it
    needs neither the runtime nor the observer checked). Raises before anything is
    created when the image is missing."""
    return backend.image_id(spec.image)


def _count(metrics: Metrics | None, result: str) -> None:
    if metrics:
        metrics.cache_requests.labels(result).inc()

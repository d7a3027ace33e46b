"""A spec's defaults from its source: the ecosystem's ``argv`` and ``outputs``, and
SOURCE_DATE_EPOCH from the last git commit.

Callers: ``farm.runner`` (every build), ``farm.buildflow`` (the cache key, before any
sandbox machinery is imported, so a cache hit stays a light process) and
``farm.service``. Reads files only; runs no program.
"""

from __future__ import annotations

from pathlib import Path

from farm import ecosystems
from farm.epoch import commit_epoch
from farm.errors import SpecError
from farm.spec import BuildSpec


class Interrupted(BaseException):
    """Raised in the main thread by farm's SIGINT/SIGTERM handler (farm.cli). Here, not
    in farm.runner, so the CLI can catch it without importing the sandbox machinery."""


def resolve(spec: BuildSpec, *, within: Path | None = None) -> BuildSpec:
    """Fill the source's ecosystem's defaults (farm.ecosystems) for ``argv`` and
    ``outputs``, and SOURCE_DATE_EPOCH from the source's last git commit (read by
    farm.epoch, which runs no program). ``within``:
    the directory the source was checked to lie beneath (``farm serve``): the source
    and its manifests are opened beneath it following no symlink, and the git
    repository is not looked for above it. Raises SpecError if it cannot."""
    updates: dict[str, object] = {}
    if spec.source_date_epoch is None:
        updates["source_date_epoch"] = commit_epoch(spec.source, within)
    ecosystem = ecosystems.detect(spec.source, within)
    if spec.argv is None:
        if ecosystem is None:
            needs = ecosystems.markers()
            raise SpecError([f"argv: required for a project without {needs}; pass `-- CMD…`"])
        updates["argv"] = ecosystem.default_argv()
    if spec.outputs is None:
        outputs = ecosystem.default_outputs(spec.source, within) if ecosystem else ["out/**"]
        if not outputs and ecosystem is not None:
            what = f"the {ecosystem.name} project has no binary"
            raise SpecError([f"outputs: {what}; declare outputs"])
        updates["outputs"] = outputs
    return spec.model_copy(update=updates)

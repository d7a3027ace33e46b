"""The resolver sandbox of ``--resolve-lock`` (farm.fetch.resolve) within the build's own
admitted ceilings: through ``farm serve`` a tenant asks for resolution, and must not get
more time, memory or CPU for it than the operator admitted for the build."""

from __future__ import annotations

from pathlib import Path

from farm.fetch.resolve import (
    RESOLVE_CPUS,
    RESOLVE_DEADLINE,
    RESOLVE_MEMORY,
    ResolveBounds,
    _spec,
)
from farm.settings import Settings
from farm.spec import build_spec


def resolver_sandbox(tmp_path: Path, **spec: object):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    build = build_spec({"source": str(src), "argv": ["true"], "outputs": ["out/x"], **spec})
    settings = Settings(home=tmp_path / "home")
    return _spec("r1", "img", tmp_path, tmp_path, "MARK", settings, ResolveBounds.of(build))


def test_a_small_build_gets_a_resolver_no_larger_than_itself(tmp_path: Path) -> None:
    sandbox = resolver_sandbox(
        tmp_path, timeout_seconds=30, resources={"memory": "256MiB", "cpus": 0.5}
    )
    assert (sandbox.deadline_seconds, sandbox.memory, sandbox.cpus) == (30, 256 << 20, 0.5)


def test_a_large_build_does_not_raise_the_resolvers_own_ceilings(tmp_path: Path) -> None:
    sandbox = resolver_sandbox(
        tmp_path, timeout_seconds=86_400, resources={"memory": "64GiB", "cpus": 16}
    )
    assert (sandbox.deadline_seconds, sandbox.memory, sandbox.cpus) == (
        RESOLVE_DEADLINE,
        RESOLVE_MEMORY,
        RESOLVE_CPUS,
    )

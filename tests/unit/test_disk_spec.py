"""resources.disk: the one cap on what a build may write to host-backed storage."""

from pathlib import Path

import pytest

from farm.errors import SpecError
from farm.policy import BuildDirs, sandbox_for
from farm.settings import Settings
from farm.spec import build_spec


def test_default_is_10_gib(tmp_path: Path) -> None:
    assert build_spec({"source": str(tmp_path)}).resources.disk == 10 << 30


@pytest.mark.parametrize(
    ("text", "size"), [("64m", 64 << 20), ("1g", 1 << 30), ("2GiB", 2 << 30), (1 << 30, 1 << 30)]
)
def test_parsed_like_memory(tmp_path: Path, text: str | int, size: int) -> None:
    spec = build_spec({"source": str(tmp_path), "resources": {"disk": text}})
    assert spec.resources.disk == size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("lots", "resources.disk: 'lots' is not a size"),
        ("-1g", "resources.disk: '-1g' is not a size"),
        (True, "resources.disk: expected a size"),
        ("10m", "resources.disk: 10m is below the minimum 64m"),
        ("63m", "resources.disk: 63m is below the minimum 64m"),
        (0, "resources.disk: 0 is below the minimum 64m"),
        ("2t", "resources.disk: 2t is above the maximum 1t"),
    ],
)
def test_bad_disk_is_a_spec_error(tmp_path: Path, value: object, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        build_spec({"source": str(tmp_path), "resources": {"disk": value}})
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(expected), err.value.problems


def test_sandbox_carries_the_cap(tmp_path: Path) -> None:
    spec = build_spec({"source": str(tmp_path), "argv": ["true"], "resources": {"disk": "1g"}})
    dirs = BuildDirs(tmp_path / "work" / "b1")
    sandbox = sandbox_for(spec, "b1", dirs, Settings(home=tmp_path))
    assert sandbox.disk == 1 << 30
    # Both writable host mounts live on the build's one capped filesystem.
    writable = {m.target: m.source for m in sandbox.mounts if not m.read_only}
    assert set(writable) == {"/build/target", "/out"}
    assert all(src.parent == dirs.disk for src in writable.values())

"""How far farm.mirror.indexline bounds a crate's index line: the per-string bound admits
real crates (rustix 0.38.37's 626-character ``[target.'cfg(..)']`` keys, which crates.io
publishes and cargo reads), while a hostile manifest is still refused, by its target key's
length and by the size of the whole line, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.errors import MirrorError
from farm.mirror.indexline import MAX_LINE_BYTES, MAX_TARGET
from farm.mirror.store import Mirror
from tests.crates import make_crate, manifest
from tests.realcrates import RUSTIX_CKSUM, ensure_rustix


@pytest.fixture(scope="module")
def rustix() -> bytes:
    return ensure_rustix()


def test_real_rustix_line_keeps_its_long_cfg_keys(tmp_path: Path, rustix: bytes) -> None:
    mirror = Mirror(tmp_path / "m").create()
    entry = mirror.add_crate(rustix, "debian-derived:librust-rustix-dev_0.38.37-4_amd64.deb")
    assert (entry.name, entry.version, entry.cksum) == ("rustix", "0.38.37", RUSTIX_CKSUM)
    (line,) = [json.loads(t) for t in mirror.index_path("rustix").read_text().splitlines()]
    targets = {d["target"] for d in line["deps"] if d["target"]}
    longest = max(targets, key=len)
    assert len(longest) == 626 and longest.startswith('cfg(all(any(target_os = "android"')
    linux_raw = [d for d in line["deps"] if d["name"] == "linux-raw-sys"]
    assert linux_raw and all(len(d["target"]) > 512 for d in linux_raw)


def _crate(name: str, body: str) -> bytes:
    return make_crate(name, "0.1.0", {"Cargo.toml": manifest(name, "0.1.0", body)})


def _with_target(key: str) -> str:
    return f"[target.'{key}'.dependencies]\nlibc = \"0.2\"\n"


def test_a_target_key_past_the_bound_is_refused(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    fits = "cfg(any(" + ", ".join(["unix"] * 2000) + "))"
    fits = fits[: MAX_TARGET - 2] + "))"
    mirror.add_crate(_crate("fits", _with_target(fits)), "file")
    hostile = "cfg(any(" + "unix, " * 2000 + "unix))"
    assert len(hostile) > MAX_TARGET
    crate = _crate("hostile", _with_target(hostile))
    refusal = f"hostile 0.1.0: a \\[target\\] key must be .*{MAX_TARGET}"
    with pytest.raises(MirrorError, match=refusal):
        mirror.add_crate(crate, "file")
    assert not mirror.index_path("hostile").exists()


@pytest.mark.parametrize("shape", ["features", "deps"])
def test_a_line_past_the_total_bound_is_refused(tmp_path: Path, shape: str) -> None:
    """Every list and string is within its own bound, but the line is not."""
    member = "m" * 500
    if shape == "features":
        body = "[features]\n" + "".join(
            f"f{i} = [{', '.join([repr(member)] * 100)}]\n" for i in range(30)
        )
    else:
        key = "cfg(" + "a" * (MAX_TARGET - 10) + ")"
        body = "".join(f"[target.'{key}{i}'.dependencies]\nd{i} = \"1\"\n" for i in range(400))
    mirror = Mirror(tmp_path / "m").create()
    with pytest.raises(MirrorError, match=f"big 0.1.0: index line .* over {MAX_LINE_BYTES}"):
        mirror.add_crate(_crate("big", body), "file")
    assert not mirror.index_path("big").exists() and mirror.entries() == []

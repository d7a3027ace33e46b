"""Profiles derived from the trace events of REAL builds of the examples, recorded once
with dockerd and runsc by tests/data/capture_profile_events.py (see tests/data/README.md)
and trimmed to what a profile reads. Two clean builds differ in cargo's hashes, rustc's
temporary names and process ids: the normalisation must hide exactly those."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from farm.ecosystems import lock_versions
from farm.observe.classify import iter_actions
from farm.observe.events import TraceEvent
from farm.profiles.derive import ProfileBuilder
from farm.profiles.model import Profile

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
HASH = re.compile(r"(?<=-)[0-9a-f]{16}(?=[./]|$)")
TMPNAME = re.compile(r"(?<=/tmp/)(rustc|cc)[A-Za-z0-9]{6}")


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        return (
            bytes.fromhex(value["$hex"])
            if set(value) == {"$hex"}
            else {k: decode(v) for k, v in value.items()}
        )
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def recorded(name: str) -> list[dict]:
    with gzip.open(DATA / f"profile-events-{name}.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def profiles(docs: list[dict], example: str) -> dict[str, Profile]:
    events = (TraceEvent.model_validate(decode(d)) for d in docs)
    builder = ProfileBuilder(lock_versions(ROOT / "examples" / example))
    for _ in builder.actions(iter_actions(builder.watch(events), builder.table.versions)):
        pass
    return {p.key(): p for p in builder.profiles()}


def another_build(docs: list[dict], seed: int) -> list[dict]:
    """The same build as a second clean run would record it: other cargo hashes, other
    temporary names, other process ids."""
    rng = random.Random(seed)
    hashes: dict[str, str] = {}
    names: dict[str, str] = {}

    def new_hash(m: re.Match) -> str:
        return hashes.setdefault(m.group(0), f"{rng.getrandbits(64):016x}")

    def new_name(m: re.Match) -> str:
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        fresh = m.group(1) + "".join(rng.choice(alphabet) for _ in range(6))
        return names.setdefault(m.group(0), fresh)

    text = json.dumps(docs)
    return json.loads(TMPNAME.sub(new_name, HASH.sub(new_hash, text)))


@pytest.mark.parametrize("example", ["hello-serde", "malicious-dep"])
def test_a_second_clean_build_gives_the_same_profiles(example: str) -> None:
    docs = recorded(example)
    first = profiles(docs, example)
    again = another_build(docs, seed=7)
    assert again != docs  # the rewrite did change hashes and names
    assert profiles(again, example) == first
    for profile in first.values():
        for aspect in ("executables", "reads", "writes"):
            for entry in getattr(profile, aspect):
                assert not HASH.search(entry) and not entry.startswith("/build/target"), entry


def test_hello_serde_profiles_its_macros_and_build_scripts() -> None:
    found = profiles(recorded("hello-serde"), "hello-serde")
    roles = {key: p.roles for key, p in found.items()}
    assert "proc macro" in roles[next(k for k in found if k.startswith("serde_derive@"))]
    assert any("build script" in r for r in roles.values())
    assert not any(p.network or p.privilege or p.survivors for p in found.values())
    assert all(not p.truncated for p in found.values())


def test_malicious_dep_profile_holds_what_evil_tried() -> None:
    evil = profiles(recorded("malicious-dep"), "malicious-dep")["evil@0.3.1"]
    assert evil.roles == ["build script"]
    assert evil.network and evil.survivors
    assert any(".ssh" in r or r == "/etc/shadow" for r in evil.reads)
    assert "<target>/release/build/evil-*/build-script-build" in evil.executables

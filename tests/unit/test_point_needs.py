"""Every trace point farm enables is needed (issue 14): the attack corpus, recorded once in
farm's real sandbox (tests/data/points-*.jsonl.gz, written by bench/points.py), is
replayed through farm's own classification and verdict with each point left out.

- A point whose absence changes an attack's result must stay in DEFAULT_POINTS.
- farm.observe.pointneeds.NEEDS, the one table of why each point is enabled, names
  exactly those attacks; a point no attack needs carries the written reason instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.observe.pointneeds import NEEDS
from farm.observe.points import DEFAULT_POINTS
from tests.pointreplay import Recording, actions, changes, counts, load, result_key

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDED = ("attacks", "evasion", "kill-cargo", "syscall-attack")
ENABLED = [p.name for p in DEFAULT_POINTS]


@pytest.fixture(scope="module")
def corpus() -> list[Recording]:
    return [load(DATA / f"points-{name}.jsonl.gz") for name in RECORDED]


@pytest.fixture(scope="module")
def needed(corpus: list[Recording]) -> dict[str, set[str]]:
    """Point -> every attack (or false blame) whose result changes without it, for each
    point that sent an event in the corpus."""
    points = {p for recording in corpus for p in counts(recording)}
    return {p: {c.who for r in corpus for c in changes(r, p)} for p in points}


@pytest.mark.parametrize("name", RECORDED)
def test_the_replay_gives_the_real_builds_actions(corpus: list[Recording], name: str) -> None:
    [recording] = [r for r in corpus if r.name == name]
    assert recording.recorded, "the recorded build blocked nothing: not an attack"
    replayed = sorted(map(result_key, actions(recording).listed()), key=repr)
    assert replayed == sorted(map(result_key, recording.recorded), key=repr)


def test_every_point_an_attack_needs_is_enabled(needed: dict[str, set[str]]) -> None:
    missing = {point: who for point, who in needed.items() if who and point not in ENABLED}
    assert missing == {}, "these points are needed by the corpus: put them back"


def test_the_table_covers_exactly_the_enabled_points() -> None:
    assert sorted(NEEDS) == sorted(ENABLED)


@pytest.mark.parametrize("point", ENABLED)
def test_the_table_names_the_attacks_that_need_each_point(
    needed: dict[str, set[str]], point: str
) -> None:
    need = NEEDS[point]
    assert need.guards, f"{point}: say what it guards"
    # Labels with a colon are actions blamed on nobody ("attacks: no package") or on
    # an innocent crate: part of what needs the point, not an attack of the table.
    assert set(need.attacks) == {w for w in needed.get(point, set()) if ":" not in w}
    # A point no attack needs is kept only with a written reason (and only then).
    assert bool(need.attacks) != bool(need.kept), point

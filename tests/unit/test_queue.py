"""The durable fair queue against a real SQLite file: round-robin across tenants, FIFO
within one, per-tenant limits, and state that survives reopening the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.errors import NotFoundError
from farm.queue import Queue, State


def fill(queue: Queue, *ids: str) -> None:
    for build_id in ids:
        queue.submit(build_id, build_id.rstrip("0123456789"), {"argv": ["true"]})


def claims(queue: Queue, n: int) -> list[str | None]:
    return [(e.id if (e := queue.claim()) else None) for _ in range(n)]


def test_round_robin_across_tenants_fifo_within_one(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite", default_limit=10)
    fill(queue, "a1", "a2", "a3", "a4", "b1", "b2", "c1")
    assert claims(queue, 8) == ["a1", "b1", "c1", "a2", "b2", "a3", "a4", None]


def test_a_tenant_at_its_limit_waits_while_others_run(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite", default_limit=1, limits={"a": 2})
    fill(queue, "a1", "a2", "a3", "b1", "b2")
    assert claims(queue, 4) == ["a1", "b1", "a2", None]
    queue.finish("b1", "succeeded", 0)
    assert claims(queue, 2) == ["b2", None]
    queue.finish("a1", "failed", 1)
    assert claims(queue, 2) == ["a3", None]
    assert {e.id: e.state for e in queue.entries()}["a1"] is State.DONE


def test_state_survives_reopening_and_requeue_puts_a_build_back(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    first = Queue(path, default_limit=1)
    fill(first, "a1", "a2")
    assert claims(first, 1) == ["a1"]
    second = Queue(path, default_limit=1)  # as after a restart
    assert [e.id for e in second.entries(state=State.RUNNING)] == ["a1"]
    assert second.depth() == {"a": 1}
    second.requeue("a1")
    entry = second.get("a1")
    assert entry.state is State.QUEUED and entry.started_at is None
    assert claims(second, 1) == ["a1"]  # oldest first again


def test_finished_entry_keeps_times_and_result(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite")
    fill(queue, "a1")
    queue.claim()
    queue.finish("a1", "error", 4, "dockerd went away")
    entry = queue.get("a1")
    assert entry.submitted_at <= entry.started_at <= entry.finished_at  # type: ignore[operator]
    assert (entry.result, entry.farm_exit_code, entry.error) == ("error", 4, "dockerd went away")
    with pytest.raises(NotFoundError):
        queue.get("nope")

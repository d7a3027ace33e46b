"""Service start-up recovery with a fake backend (the real one is exercised by
tests/e2e/test_serve.py's SIGKILL test): orphans of a dead service are marked lost and
their sandboxes torn down, even if the dead service's pid now belongs to someone else;
a build claimed before it had a sandbox is requeued."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from farm.metrics import Metrics
from farm.queue import Queue, State
from farm.records import BuildRecord, Status
from farm.runner import Runner
from farm.service import Service, SourcePolicy
from farm.settings import Settings
from farm.store import Store


class FakeBackend:
    name = "fake"

    def __init__(self, sandboxes: dict[str, str]) -> None:
        self.sandboxes = sandboxes
        self.torn_down: list[str] = []

    def list_sandboxes(self) -> dict[str, str]:
        return dict(self.sandboxes)

    def teardown(self, sandbox_id: str) -> list[str]:
        self.torn_down.append(sandbox_id)
        return [f"container {sandbox_id}"] if self.sandboxes.pop(sandbox_id, None) else []


def record(build_id: str, owner_pid: int, container_id: str) -> BuildRecord:
    return BuildRecord(
        id=build_id,
        status=Status.RUNNING,
        tenant="alpha",
        image="farm/rust:bookworm",
        runtime="runsc",
        spec={},
        created_at=datetime.now(UTC),
        owner_pid=owner_pid,
        container_id=container_id,
    )


def test_recover_marks_orphans_lost_reaps_them_and_requeues_unstarted(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store, queue = Store(tmp_path), Queue(tmp_path / "index.sqlite", default_limit=9)
    backend = FakeBackend({"c-dead": "b-dead", "c-reused": "b-reused"})
    for build_id in ("b-dead", "b-reused", "b-unstarted", "b-waiting"):
        queue.submit(build_id, "alpha", {})
    for _ in range(3):
        queue.claim()
    dead_pid = 2**22 + 1  # above pid_max's default: no such process
    store.save(record("b-dead", dead_pid, "c-dead"))
    store.save(record("b-reused", os.getpid(), "c-reused"))  # pid alive: reused
    metrics = Metrics(CollectorRegistry())
    service = Service(
        queue=queue,
        store=store,
        backend=backend,
        runner_factory=lambda on_phase: Runner(settings, backend, store, on_phase=on_phase),
        metrics=metrics,
        sources=SourcePolicy(tmp_path),
        concurrency=1,
    )
    said = service.recover()

    assert sorted(backend.torn_down) == ["c-dead", "c-reused"] and backend.sandboxes == {}
    for build_id in ("b-dead", "b-reused"):
        assert store.get(build_id).status is Status.LOST
        entry = queue.get(build_id)
        assert (entry.state, entry.result, entry.farm_exit_code) == (State.DONE, "lost", 4)
    assert queue.get("b-unstarted").state is State.QUEUED
    assert queue.get("b-waiting").state is State.QUEUED
    assert any("requeued build b-unstarted" in line for line in said)
    registry = metrics.registry
    assert registry.get_sample_value("farm_sandboxes_reaped_total") == 2
    lost = {"tenant": "alpha", "result": "lost"}
    assert registry.get_sample_value("farm_builds_total", lost) == 2

"""A build whose observation or collection fails unexpectedly is never saved as
succeeded (farm.runner ``_finish``): its record was left SUCCEEDED with no observation
when the observer's read raised something other than a FarmError."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.observe.spool import TraceRecord
from farm.policy import BuildDirs
from farm.records import BuildRecord, Status
from farm.runner import Runner
from farm.sandbox import SandboxResult
from farm.settings import Settings
from farm.spec import build_spec
from farm.store import Store


class BrokenObserver:
    """An observer whose read fails the way select() did with a descriptor >= 1024."""

    def ready(self) -> None:
        pass

    def collect(self, container_id: str, timeout: float | None = None) -> TraceRecord:
        raise ValueError("filedescriptor out of range in select()")


def test_an_unexpected_error_while_observing_leaves_the_build_errored(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    assert settings.observing
    store = Store(settings.home)
    backend = None  # never reached: run() has returned
    runner = Runner(settings, backend, store, observer=BrokenObserver())  # type: ignore[arg-type]
    dirs = BuildDirs(tmp_path / "build")
    dirs.disk.mkdir(parents=True)
    (tmp_path / "src").mkdir()
    spec = build_spec({"source": str(tmp_path / "src"), "argv": ["true"]})
    now = datetime.now(UTC)
    record = BuildRecord(
        id="b1",
        status=Status.RUNNING,
        tenant="t",
        image="i",
        runtime="runsc",
        spec={},
        created_at=now,
        container_id="c1",
    )
    result = SandboxResult(
        container_id="c1", runtime="runsc", exit_code=0, started_at=now, finished_at=now
    )
    with pytest.raises(ValueError):  # a bug stays loud; the record is still final
        runner._finish(record, spec, dirs, None, result, 0.0)
    saved = store.get("b1")
    assert saved.status is Status.ERROR
    assert any("filedescriptor out of range" in note for note in saved.notes)
    assert not saved.artifacts

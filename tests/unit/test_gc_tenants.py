"""`farm gc --keep N` keeps N records per tenant: one noisy tenant cannot evict another's
history. Real Store in a temporary FARM_HOME, through the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from farm.cli import main
from farm.records import BuildRecord, Status
from farm.store import Store


def save(store: Store, build_id: str, tenant: str, age_minutes: int, **fields: object) -> None:
    store.save(
        BuildRecord(
            id=build_id,
            tenant=tenant,
            image="i",
            runtime="runsc",
            spec={},
            created_at=datetime.now(UTC) - timedelta(minutes=age_minutes),
            **{"status": Status.SUCCEEDED, **fields},
        )
    )


def test_a_noisy_tenant_cannot_evict_another_tenants_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    store = Store(home)
    save(store, "quiet-old", "quiet", age_minutes=600)
    save(store, "quiet-new", "quiet", age_minutes=500)
    for i in range(6):  # all newer than the quiet tenant's builds
        save(store, f"noisy-{i}", "noisy", age_minutes=10 - i)
    save(store, "noisy-running", "noisy", age_minutes=900, status=Status.RUNNING)
    monkeypatch.setenv("FARM_HOME", str(home))

    assert main(["gc", "--keep", "2"]) == 0

    assert "removed 4 builds" in capsys.readouterr().out
    kept = {r.id for r in store.list()}
    # The newest 2 of each tenant, and a running build whatever its age.
    assert kept == {"quiet-old", "quiet-new", "noisy-5", "noisy-4", "noisy-running"}


def test_keep_must_not_be_negative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    save(Store(home), "b", "t", age_minutes=1)
    monkeypatch.setenv("FARM_HOME", str(home))
    assert main(["gc", "--keep", "-1"]) == 2
    assert "--keep -1: give 0 or more records to keep per tenant" in capsys.readouterr().err
    assert [r.id for r in Store(home).list()] == ["b"]

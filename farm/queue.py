"""The durable, fair build queue of ``farm serve``, kept in SQLite under ``$FARM_HOME``.

Callers: ``farm.service`` (submit, claim, finish, recover) and ``farm.api`` (status of
one build, listings). Every state change is one SQLite transaction, so a crash at any
point leaves each build either ``queued`` (it will run after a restart), ``running``
(the restart marks it lost and reaps its sandbox) or ``done``.

Fairness: a worker takes the oldest build of the tenant that was served least recently
among tenants below their running limit (round-robin across tenants, FIFO within one),
so one tenant's burst cannot starve another.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from farm.errors import NotFoundError
from farm.sqlitedb import create_schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    seq INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    claim_seq INTEGER,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    farm_exit_code INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS queue_state ON queue(state, tenant);
"""


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Entry(BaseModel):
    """One build as the queue knows it; times are Unix seconds taken by the service."""

    id: str
    tenant: str
    spec: dict[str, Any]
    state: State
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    #: The BuildRecord status once done (or ``lost``/``error`` if no record exists).
    result: str | None = None
    #: The exit code ``farm build`` gives for this result (0, 1, 2, 3 or 4).
    farm_exit_code: int | None = None
    error: str | None = None


_KEYS = ["id", "tenant", "spec", "state", "submitted_at", "started_at", "finished_at"]
_KEYS += ["result", "farm_exit_code", "error"]
_COLUMNS = ", ".join(_KEYS)


def _entry(row: tuple[Any, ...]) -> Entry:
    data = dict(zip(_KEYS, row, strict=True))
    data["spec"] = json.loads(data["spec"])
    return Entry.model_validate(data)


class Queue:
    """``limits`` maps tenant -> most builds it may run at once; others get ``default_limit``."""

    def __init__(
        self, path: Path, default_limit: int = 1, limits: dict[str, int] | None = None
    ) -> None:
        self.path = path
        self.default_limit = default_limit
        self.limits = dict(limits or {})
        create_schema(self.path, SCHEMA, wal=True)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One connection per call: sqlite3 connections must not cross threads, and
        # isolation_level=None lets BEGIN IMMEDIATE make a claim atomic across them.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def limit(self, tenant: str) -> int:
        return self.limits.get(tenant, self.default_limit)

    def submit(self, build_id: str, tenant: str, spec: dict[str, Any]) -> Entry:
        with self._db() as db:
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queue").fetchone()
            db.execute(
                "INSERT INTO queue (id, tenant, spec, state, seq, submitted_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (build_id, tenant, json.dumps(spec), State.QUEUED.value, seq, time.time()),
            )
        return self.get(build_id)

    def claim(self) -> Entry | None:
        """Move the next fair build to ``running`` and return it; None if none may run."""
        with self._db() as db:
            running = dict(
                db.execute(
                    "SELECT tenant, COUNT(*) FROM queue WHERE state = ? GROUP BY tenant",
                    (State.RUNNING.value,),
                ).fetchall()
            )
            served = dict(
                db.execute(
                    "SELECT tenant, MAX(claim_seq) FROM queue WHERE claim_seq IS NOT NULL"
                    " GROUP BY tenant"
                ).fetchall()
            )
            waiting = db.execute(
                "SELECT tenant, MIN(seq) FROM queue WHERE state = ? GROUP BY tenant",
                (State.QUEUED.value,),
            ).fetchall()
            eligible = [
                (served.get(tenant, 0), seq, tenant)
                for tenant, seq in waiting
                if running.get(tenant, 0) < self.limit(tenant)
            ]
            if not eligible:
                return None
            _, seq, _ = min(eligible)
            (claim_seq,) = db.execute(
                "SELECT COALESCE(MAX(claim_seq), 0) + 1 FROM queue"
            ).fetchone()
            db.execute(
                "UPDATE queue SET state = ?, claim_seq = ?, started_at = ? WHERE seq = ?",
                (State.RUNNING.value, claim_seq, time.time(), seq),
            )
            (build_id,) = db.execute("SELECT id FROM queue WHERE seq = ?", (seq,)).fetchone()
        return self.get(build_id)

    def finish(self, build_id: str, result: str, exit_code: int, error: str | None = None) -> None:
        """``exit_code`` is farm's (0-4) for ``result``, not the build command's."""
        with self._db() as db:
            db.execute(
                "UPDATE queue SET state = ?, finished_at = ?, result = ?, farm_exit_code = ?,"
                " error = ? WHERE id = ?",
                (State.DONE.value, time.time(), result, exit_code, error, build_id),
            )

    def cancel_queued(self, build_id: str, exit_code: int) -> bool:
        """Mark a still-queued build cancelled; False if a worker already has it."""
        with self._db() as db:
            done = db.execute(
                "UPDATE queue SET state = ?, finished_at = ?, result = 'cancelled',"
                " farm_exit_code = ?, error = 'cancelled before it ran' WHERE id = ? AND state = ?",
                (State.DONE.value, time.time(), exit_code, build_id, State.QUEUED.value),
            )
            return done.rowcount == 1

    def requeue(self, build_id: str) -> None:
        """Put a claimed build back, e.g. when the service stops before it ran."""
        with self._db() as db:
            db.execute(
                "UPDATE queue SET state = ?, started_at = NULL WHERE id = ?",
                (State.QUEUED.value, build_id),
            )

    def get(self, build_id: str) -> Entry:
        """Raises NotFoundError for an id the queue never saw."""
        with self._db() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM queue WHERE id = ?", (build_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"build {build_id!r} does not exist")
        return _entry(row)

    def entries(
        self, state: State | None = None, tenant: str | None = None, limit: int = 1000
    ) -> list[Entry]:
        """Newest first."""
        where, args = [], []
        if state:
            where, args = [*where, "state = ?"], [*args, state.value]
        if tenant:
            where, args = [*where, "tenant = ?"], [*args, tenant]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM queue{clause} ORDER BY seq DESC LIMIT ?", [*args, limit]
            ).fetchall()
        return [_entry(r) for r in rows]

    def depth(self) -> dict[str, int]:
        """Queued builds per tenant."""
        with self._db() as db:
            return dict(
                db.execute(
                    "SELECT tenant, COUNT(*) FROM queue WHERE state = ? GROUP BY tenant",
                    (State.QUEUED.value,),
                ).fetchall()
            )

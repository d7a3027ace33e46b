"""Create an SQLite database's schema safely when several threads or processes start at
once, and open the short-lived connections farm uses on it.

Callers: ``farm.store.Store``, ``farm.queue.Queue``, ``farm.cache.Cache`` and
``farm.profiles.store.ProfileStore``, each once in its constructor; all but the queue
(which needs BEGIN IMMEDIATE) then use :func:`transaction`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def create_schema(path: Path, schema: str, *, wal: bool, patience: float = 30.0) -> None:
    """Run ``schema`` (idempotent DDL) on ``path``, first switching to WAL if ``wal``.

    WAL mode is a property of the file, so it is set once here. Switching needs an
    exclusive lock, and SQLite answers BUSY at once instead of waiting when two
    connections try together (service workers, or CLI processes on a fresh FARM_HOME),
    so this retries until ``patience`` runs out. Raises sqlite3.OperationalError.
    """
    deadline = time.monotonic() + patience
    while True:
        db = sqlite3.connect(path, timeout=patience)
        try:
            if wal:
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)  # commits on its own
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        finally:
            db.close()
        time.sleep(0.05)


@contextmanager
def transaction(path: Path, timeout: float = 30.0) -> Iterator[sqlite3.Connection]:
    """One connection per call (sqlite3 connections must not cross threads), committed
    when the block ends and rolled back if it raises, then closed."""
    db = sqlite3.connect(path, timeout=timeout)
    try:
        with db:
            yield db
    finally:
        db.close()

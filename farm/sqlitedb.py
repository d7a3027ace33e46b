"""Create an SQLite database's schema safely when several threads or processes start at once.

Callers: ``farm.store.Store``, ``farm.queue.Queue`` and ``farm.cache.Cache``, each once
in its constructor. Each then opens its own short-lived connections.
"""

from __future__ import annotations

import sqlite3
import time
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

"""Upload sessions kept in the controller's store, so they outlive a controller restart.

Callers: ``farm.k8s.artifacts.Ledger`` only, which adds the locking, the caps and the
blob checks. A session is one build run's upload (key ``ns/name/uid``): the hash of its
token, its Build's output limits, the blobs delivered so far with the bytes charged for
them, and the manifest once it is accepted. It lives in ``k8s-uploads.sqlite`` next to
the store's index, on the controller's volume: a rollout or crash mid-collect loses only
the requests in flight, which the collector re-sends (farm.k8s.collector).

The token itself is never written: a session keeps its SHA-256 (the token is 256 random
bits, so an unsalted hash is as strong as the token), and a lookup compares hashes in
constant time. A session not touched for ``ttl`` seconds is expired: it is not found, and
:meth:`Sessions.prune` deletes it (the finalizer normally forgets a session first; this
catches the ones a deleted Build left while no controller ran).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from farm.spec import OutputLimits
from farm.sqlitedb import create_schema, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS upload_sessions (
    key TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    limits TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    touched REAL NOT NULL,
    manifest TEXT
);
CREATE TABLE IF NOT EXISTS upload_blobs (
    key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (key, sha256)
);
"""

#: A session nobody touched for this long is expired and pruned: far longer than any
#: build's deadline plus its collection, so only orphans reach it.
SESSION_TTL = 7 * 24 * 3600.0


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """One session as read from the store (a snapshot: re-read for fresh counts)."""

    key: str
    limits: OutputLimits
    total: int
    blobs: int
    manifest: str | None


class Sessions:
    """The durable sessions table. Every method is one short transaction."""

    def __init__(
        self, path: Path, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        self.path, self.ttl, self.clock = path, ttl, clock
        create_schema(path, SCHEMA, wal=True)

    def open(self, key: str, token: str, limits: OutputLimits) -> None:
        """Accept uploads for ``key`` with ``token``: a new session, or the same one
        touched (its progress kept); a different token starts it afresh."""
        digest, now = token_hash(token), self.clock()
        with transaction(self.path) as db:
            row = db.execute(
                "SELECT token_sha256, touched FROM upload_sessions WHERE key = ?", (key,)
            ).fetchone()
            if row is not None and row[0] == digest and not self._expired(row[1], now):
                db.execute("UPDATE upload_sessions SET touched = ? WHERE key = ?", (now, key))
                return
            db.execute("DELETE FROM upload_blobs WHERE key = ?", (key,))
            db.execute(
                "INSERT OR REPLACE INTO upload_sessions (key, token_sha256, limits, touched)"
                " VALUES (?, ?, ?, ?)",
                (key, digest, limits.model_dump_json(), now),
            )

    def find(self, key: str, token: str) -> Session | None:
        """The live session of ``key`` if ``token`` is its token, else None."""
        found = self._read(key)
        if found is None:
            return None
        session, stored_hash = found
        if not hmac.compare_digest(stored_hash.encode(), token_hash(token).encode()):
            return None
        return session

    def get(self, key: str) -> Session | None:
        found = self._read(key)
        return found[0] if found else None

    def _read(self, key: str) -> tuple[Session, str] | None:
        with transaction(self.path) as db:
            row = db.execute(
                "SELECT token_sha256, limits, total, touched, manifest FROM upload_sessions"
                " WHERE key = ?",
                (key,),
            ).fetchone()
            if row is None or self._expired(row[3], self.clock()):
                return None
            (count,) = db.execute(
                "SELECT COUNT(*) FROM upload_blobs WHERE key = ?", (key,)
            ).fetchone()
        limits = OutputLimits.model_validate_json(row[1])
        return Session(key, limits, int(row[2]), int(count), row[4]), str(row[0])

    def blobs(self, key: str) -> dict[str, int]:
        """Digest to size of every blob ``key``'s session was delivered."""
        with transaction(self.path) as db:
            rows = db.execute(
                "SELECT sha256, size FROM upload_blobs WHERE key = ?", (key,)
            ).fetchall()
        return {str(sha): int(size) for sha, size in rows}

    def add_blob(self, key: str, sha: str, size: int) -> bool:
        """Record a delivered blob; charge its size once (a re-sent blob is free).
        False if the session is gone (forgotten meanwhile)."""
        with transaction(self.path) as db:
            if db.execute("SELECT 1 FROM upload_sessions WHERE key = ?", (key,)).fetchone() is None:
                return False
            added = db.execute(
                "INSERT OR IGNORE INTO upload_blobs (key, sha256, size) VALUES (?, ?, ?)",
                (key, sha, size),
            ).rowcount
            db.execute(
                "UPDATE upload_sessions SET total = total + ?, touched = ? WHERE key = ?",
                (size if added else 0, self.clock(), key),
            )
        return True

    def finish(self, key: str, manifest: str) -> str | None:
        """Record ``manifest`` unless one is recorded already; returns the one that
        stands (None if the session is gone)."""
        with transaction(self.path) as db:
            db.execute(
                "UPDATE upload_sessions SET manifest = ?, touched = ?"
                " WHERE key = ? AND manifest IS NULL",
                (manifest, self.clock(), key),
            )
            row = db.execute(
                "SELECT manifest FROM upload_sessions WHERE key = ?", (key,)
            ).fetchone()
        return row[0] if row else None

    def forget(self, key: str) -> None:
        with transaction(self.path) as db:
            db.execute("DELETE FROM upload_blobs WHERE key = ?", (key,))
            db.execute("DELETE FROM upload_sessions WHERE key = ?", (key,))

    def prune(self) -> int:
        """Delete expired sessions and their blob lists; returns how many. The blobs
        themselves stay in the content-addressed store (others may share them)."""
        oldest = self.clock() - self.ttl
        with transaction(self.path) as db:
            db.execute(
                "DELETE FROM upload_blobs WHERE key IN"
                " (SELECT key FROM upload_sessions WHERE touched < ?)",
                (oldest,),
            )
            return db.execute("DELETE FROM upload_sessions WHERE touched < ?", (oldest,)).rowcount

    def keys(self) -> list[str]:
        with transaction(self.path) as db:
            return [str(k) for (k,) in db.execute("SELECT key FROM upload_sessions")]

    def _expired(self, touched: float, now: float) -> bool:
        return touched < now - self.ttl

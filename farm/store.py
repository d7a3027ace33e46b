"""Content-addressed blob store plus the SQLite index of builds, under ``$FARM_HOME``.

Callers: ``farm.runner`` (records builds, stores artifacts and logs), ``farm.cli``
(list, show, logs, artifacts, gc). Blobs are keyed by sha256 and written atomically;
the index keeps each ``BuildRecord`` as JSON next to the columns queries need.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from farm.errors import NotFoundError
from farm.records import BuildRecord, Status
from farm.sqlitedb import create_schema, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    tenant TEXT NOT NULL,
    created_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS builds_status ON builds(status);
CREATE TABLE IF NOT EXISTS images (
    tag TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    rootfs_sha256 TEXT NOT NULL,
    recipe TEXT NOT NULL
);
"""


class TooLarge(Exception):
    """A stream exceeded the byte limit given to ``Store.put_stream``."""


class Store:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.blobs = home / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        create_schema(home / "index.sqlite", SCHEMA, wal=True)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.home / "index.sqlite")

    # blobs

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256[2:]

    def put_stream(self, src: BinaryIO, limit: int) -> tuple[str, int]:
        """Store ``src``; raises TooLarge (and stores nothing) past ``limit`` bytes."""
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"more than {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            final = self.blob_path(sha)
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            return sha, size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_file(self, path: Path) -> tuple[str, int]:
        with path.open("rb") as src:
            return self.put_stream(src, limit=1 << 62)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put_stream(io.BytesIO(data), limit=len(data))

    # builds

    def save(self, record: BuildRecord) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO builds (id, status, tenant, created_at, doc)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.status.value,
                    record.tenant,
                    record.created_at.isoformat(),
                    record.model_dump_json(),
                ),
            )

    def get(self, build_id: str) -> BuildRecord:
        """Raises NotFoundError for an unknown id (a unique prefix is accepted)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT doc FROM builds WHERE id = ? OR id LIKE ? LIMIT 2",
                (build_id, build_id.replace("%", "") + "%"),
            ).fetchall()
        if len(rows) != 1:
            problem = "is ambiguous" if rows else "does not exist"
            raise NotFoundError(f"build {build_id!r} {problem}; see `farm list`")
        return BuildRecord.model_validate_json(rows[0][0])

    def list(self, status: Status | None = None, limit: int = 1000) -> list[BuildRecord]:
        query, args = "SELECT doc FROM builds", []
        if status:
            query, args = query + " WHERE status = ?", [status.value]
        with self._db() as db:
            rows = db.execute(query + " ORDER BY created_at DESC LIMIT ?", [*args, limit])
            return [BuildRecord.model_validate_json(r[0]) for r in rows.fetchall()]

    def delete(self, build_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM builds WHERE id = ?", (build_id,))

    # images

    def record_image(self, tag: str, image_id: str, rootfs_sha256: str, recipe: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)",
                (tag, image_id, rootfs_sha256, recipe),
            )

    def image(self, tag: str) -> dict[str, str] | None:
        with self._db() as db:
            row = db.execute(
                "SELECT image_id, rootfs_sha256, recipe FROM images WHERE tag = ?", (tag,)
            ).fetchone()
        return dict(zip(("image_id", "rootfs_sha256", "recipe"), row, strict=True)) if row else None

    # gc

    def referenced_blobs(self) -> set[str]:
        refs = set()
        for record in self.list(limit=1 << 30):
            refs.update(a.sha256 for a in record.artifacts)
            kept = (
                record.log_sha256,
                record.provenance_sha256,
                record.lockfile_sha256,
                record.blocked_actions_sha256,
            )
            refs.update(s for s in kept if s)
        return refs

    def all_blobs(self) -> Iterator[tuple[str, Path]]:
        for sub in self.blobs.iterdir():
            if sub.is_dir():
                for blob in sub.iterdir():
                    yield sub.name + blob.name, blob

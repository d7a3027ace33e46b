"""Behaviour profiles kept per tenant, package version and build, in the store's index.

Callers: ``farm.profiles.judge`` (saves a build's profiles and finds each package's
last known one) and ``farm diff``. Same SQLite file as ``farm.store.Store``; each row
holds one build's profile of one package version as JSON, so a version's profile is
traceable to the builds it came from.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path

from farm.profiles.model import Profile
from farm.sqlitedb import create_schema, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    tenant TEXT NOT NULL,
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    build_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    doc TEXT NOT NULL,
    -- 1: the build was clean, so this profile may be a later build's baseline.
    accepted INTEGER NOT NULL,
    PRIMARY KEY (tenant, package, version, build_id)
);
CREATE INDEX IF NOT EXISTS profiles_package ON profiles(tenant, package, created_at);
"""


class ProfileStore:
    def __init__(self, home: Path) -> None:
        self.path = home / "index.sqlite"
        home.mkdir(parents=True, exist_ok=True)
        create_schema(self.path, SCHEMA, wal=True)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.path)

    def save(
        self,
        tenant: str,
        build_id: str,
        when: datetime,
        profiles: list[Profile],
        accepted: bool = True,
    ) -> None:
        """Keep one build's profiles; only an ``accepted`` (clean) build's become the
        baseline later builds are compared with, or a quarantined build, retried, would
        pass as its own baseline."""
        with self._db() as db:
            db.executemany(
                "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        tenant,
                        p.package,
                        p.version,
                        build_id,
                        when.isoformat(),
                        p.model_dump_json(),
                        int(accepted),
                    )
                    for p in profiles
                ],
            )

    def history(
        self, tenant: str, package: str, version: str | None = None, accepted: bool = False
    ) -> list[tuple[str, Profile]]:
        """(build id, profile) of ``package`` (at ``version``; only accepted builds' if
        ``accepted``), newest first."""
        query = "SELECT build_id, doc FROM profiles WHERE tenant = ? AND package = ?"
        query += " AND accepted = 1" if accepted else ""
        args = [tenant, package]
        if version is not None:
            query, args = query + " AND version = ?", [*args, version]
        with self._db() as db:
            rows = db.execute(query + " ORDER BY created_at DESC, build_id", args).fetchall()
        return [(b, Profile.model_validate_json(doc)) for b, doc in rows]

    def of_build(self, build_id: str) -> list[Profile]:
        """Every profile one build produced."""
        with self._db() as db:
            rows = db.execute("SELECT doc FROM profiles WHERE build_id = ?", (build_id,))
            return [Profile.model_validate_json(r[0]) for r in rows.fetchall()]

    def last_known(
        self, tenant: str, package: str, *, before_build: str
    ) -> tuple[str, Profile] | None:
        """The newest profile of ``package`` from a clean build other than ``before_build``."""
        for build_id, profile in self.history(tenant, package, accepted=True):
            if build_id != before_build:
                return build_id, profile
        return None

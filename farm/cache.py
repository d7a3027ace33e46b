"""The verified build cache: a build's result is served again only if it was clean.

Callers: ``farm.buildflow`` (look up before a build, offer after it) and ``farm.cli``
(``farm gc --cache-max-size`` prunes it). Entries live in ``$FARM_HOME/cache.sqlite``;
each names a build record in the index. On every hit the record's signed provenance must
verify with this installation's key and name exactly its artifacts, and the artifact
blobs are re-hashed, so an altered record or blob is a miss, never served. Only results
that pass ``cacheable`` are ever stored, and a hit re-checks it: nothing failed,
quarantined, observed doing something blocked, observed incompletely (lost events),
unreproducible or built without gVisor is served (SLSA Build L3: no cache poisoning).
A result built from a dependency layer is served only to a build that asked for one
(``lookup(layered_ok=True)``, docs/layers.md).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from farm import __version__
from farm.digests import file_sha256
from farm.errors import FarmError
from farm.provenance import BLOCKED_ACTIONS, PAYLOAD_TYPE, byproduct
from farm.records import BuildRecord, Status
from farm.reprocheck import REPORT_PATH
from farm.sandbox import SandboxSpec
from farm.signing import load_public_key, open_envelope, public_key_path
from farm.spec import BuildSpec
from farm.sqlitedb import create_schema, transaction
from farm.store import Store

#: Part of every key: a new farm release may build differently, so it never reuses.
BUILDER_VERSION = f"farm/{__version__}"

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    build_id TEXT NOT NULL,
    checked_runs INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL NOT NULL
);
"""


def uncacheable_reason(record: BuildRecord) -> str | None:
    """Why ``record`` must never be served from the cache, or None if it is clean.

    The one place that decides; extend it (e.g. for a quarantined status), never bypass it.
    """
    if record.status is not Status.SUCCEEDED or record.exit_code != 0:
        return f"the build {record.status.value} (exit {record.exit_code})"
    if record.insecure_runtime:
        return f"built with {record.runtime!r}, not gVisor"
    blocked = [a for a in record.blocked_actions if not a.get("allowed")]
    if blocked:
        # Audit mode lets such a build succeed; its result is still not trusted for reuse.
        return f"{len(blocked)} blocked or suspicious actions were observed"
    obs = record.observation
    if obs is not None and (not obs.complete or obs.lost):
        # The same test as provenance's "complete": a lost event may have been the attempt.
        lost = f" (lost {obs.lost} events)" if obs.lost else ""
        return f"gVisor's record of the build is incomplete{lost}, so a clean result is unproven"
    if record.sinkhole_unready:
        # Its DNS queries may have gone unrecorded: a clean record is unproven.
        return f"{record.sinkhole_unready}, so its name lookups are unproven"
    verdict = record.reproducibility
    if verdict is not None and not verdict.reproducible:
        return f"the reproducibility check said {verdict.result}"
    if record.lock_resolution is not None:
        # The key names the tree without that lock: a later build of the same tree (with
        # its own lock, or none) must not be served a result of a lock farm chose.
        return f"its Cargo.lock was {record.lock_resolution.describe()}"
    return None


def cacheable(record: BuildRecord) -> bool:
    return uncacheable_reason(record) is None


def checked_runs(record: BuildRecord) -> int:
    verdict = record.reproducibility
    return verdict.runs if verdict is not None and verdict.reproducible else 0


def cache_key(
    spec: BuildSpec, sandbox: SandboxSpec, *, source_digest: str, image_id: str, runtime: str
) -> str:
    """sha256 over everything that decides a build's result (``spec`` is resolved)."""
    material = {
        "source": source_digest,
        "image": image_id,
        "argv": sandbox.argv,
        "env": sorted(sandbox.env.items()),
        "policy": _policy(sandbox, spec, runtime),
        "outputs": spec.outputs,
        "builder": BUILDER_VERSION,
        # Every other field of the spec too (tenant, timeout, any policy a later field
        # adds), so a new field can never be left out; the source counts by content only.
        "spec": spec.model_dump(mode="json", exclude={"source"}),
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _policy(sandbox: SandboxSpec, spec: BuildSpec, runtime: str) -> dict[str, Any]:
    # The build id (name, labels) and host paths are per build; everything else is policy.
    view = sandbox.model_dump(mode="json", exclude={"name", "labels", "argv", "env", "mounts"})
    view["mounts"] = [(m.target, m.read_only) for m in sandbox.mounts]
    view["runtime"] = runtime
    view["limits"] = spec.limits.model_dump()
    return view


class Cache:
    def __init__(self, home: Path, store: Store) -> None:
        self.home = home
        self.path = home / "cache.sqlite"
        self.store = store
        home.mkdir(parents=True, exist_ok=True)
        create_schema(self.path, SCHEMA, wal=False)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.path)

    def lookup(self, key: str, min_runs: int = 0, layered_ok: bool = False) -> BuildRecord | None:
        """The clean build stored under ``key`` and verified by ``min_runs`` runs if asked.

        A build that started from a dependency layer (farm.layers) is served only when
        ``layered_ok`` (the asking build used ``--layer`` too): a plain build never gets a
        result whose dependencies it did not ask to take from a layer."""
        with self._db() as db:
            row = db.execute(
                "SELECT build_id, checked_runs FROM entries WHERE key = ?", (key,)
            ).fetchone()
        if row is None or row[1] < min_runs:
            return None
        record = self._still_valid(row[0])
        if record is None:
            self.forget(key)
            return None
        if record.layer is not None and not layered_ok:
            return None  # kept for --layer builds; a cold result replaces it (offer)
        with self._db() as db:
            db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (time.time(), key))
        return record

    def _still_valid(self, build_id: str) -> BuildRecord | None:
        try:
            record = self.store.get(build_id)
        except FarmError:
            return None  # pruned by `farm gc`
        if not cacheable(record) or not self._attested(record):
            return None
        for artifact in record.artifacts:
            if _file_sha256(self.store.blob_path(artifact.sha256)) != artifact.sha256:
                return None  # gone or altered on disk: rebuild rather than serve it
        return record

    def _attested(self, record: BuildRecord) -> bool:
        """The record's provenance is signed by this installation and names its artifacts."""
        if not record.provenance_sha256:
            return False
        try:
            key = load_public_key(public_key_path(self.home))
            envelope = json.loads(self.store.blob_path(record.provenance_sha256).read_bytes())
            statement = json.loads(open_envelope(envelope, key, PAYLOAD_TYPE))
            subjects = {(s["name"], s["digest"]["sha256"]) for s in statement["subject"]}
            build = statement["predicate"]["runDetails"]["metadata"]["invocationId"]
            clean = _signed_clean(statement)
        except (FarmError, OSError, ValueError, KeyError, TypeError):
            return False
        artifacts = {(a.path, a.sha256) for a in record.artifacts if a.path != REPORT_PATH}
        return build == record.id and subjects == artifacts and clean

    def offer(self, key: str, record: BuildRecord) -> bool:
        """Store ``record`` under ``key`` if it is clean; says whether it did.

        An entry verified by more runs is never replaced by a less verified one, nor a
        cold result (served to every build) by a layered one (served to ``--layer`` only).
        """
        if not cacheable(record):
            return False
        runs = checked_runs(record)
        size = sum(a.size for a in record.artifacts)
        now = time.time()
        with self._db() as db:
            old = db.execute(
                "SELECT checked_runs, build_id FROM entries WHERE key = ?", (key,)
            ).fetchone()
            if old is not None and old[0] > runs:
                return False
            if old is not None and record.layer is not None and self._cold(old[1]):
                return False
            db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                (key, record.id, runs, size, now, now),
            )
        return True

    def _cold(self, build_id: str) -> bool:
        """Whether ``build_id`` is a servable result that used no dependency layer."""
        record = self._still_valid(build_id)
        return record is not None and record.layer is None

    def forget(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM entries WHERE key = ?", (key,))

    def build_ids(self) -> set[str]:
        with self._db() as db:
            return {r[0] for r in db.execute("SELECT build_id FROM entries")}

    def prune(self, max_bytes: int) -> tuple[int, int]:
        """Drop least recently used entries until their artifacts total ``max_bytes`` or
        less. Returns (entries dropped, bytes they held). Blobs go at the next gc pass."""
        with self._db() as db:
            rows = db.execute("SELECT key, size FROM entries ORDER BY last_used DESC").fetchall()
            total, dropped, freed = 0, 0, 0
            for key, size in rows:
                total += size
                if total > max_bytes:
                    db.execute("DELETE FROM entries WHERE key = ?", (key,))
                    dropped, freed = dropped + 1, freed + size
        return dropped, freed


def _signed_clean(statement: dict[str, Any]) -> bool:
    """What the signed statement says agrees with a clean record, whatever the index says:
    gVisor, and an observation (if any) that lost nothing."""
    params = statement["predicate"]["buildDefinition"].get("internalParameters", {})
    blocked = byproduct(statement, BLOCKED_ACTIONS) or {}
    complete = not blocked.get("observed") or blocked.get("complete") is True
    return params.get("insecureRuntime") is False and complete


def _file_sha256(path: Path) -> str | None:
    """None when the blob cannot be read: the entry is then treated as corrupt."""
    try:
        return file_sha256(path)
    except OSError:
        return None

"""The controller's artifact endpoint: collectors upload a build's outputs here.

Callers: ``farm.k8s.controller`` runs one :class:`ArtifactServer`; ``farm.k8s.reconcile``
registers each build's token with :meth:`Ledger.expect` and reads the finished upload
with :meth:`Ledger.result`; ``farm.k8s.collector`` (in the build pod) is the client.

Nothing the collector says is trusted beyond its token: the controller hashes every
blob itself while writing it to the content-addressed store, caps each blob and the
total with the Build's own limits, and accepts the final manifest only if every entry
names a blob this upload session delivered with that exact digest and size, and the
store's copy of each still hashes to it.

Sessions are durable (farm.k8s.uploads, on the controller's volume, the token kept only
as its hash), so a controller restart mid-collect loses nothing but the requests in
flight; every request is safe to send again (docs/kubernetes.md, "Restarts"):

    PUT  /v1/builds/<ns>/<name>/<uid>/blobs   body: one file   -> {"sha256", "size"}
         optional X-Farm-SHA256: a re-send; a blob the session holds is checked, not
         charged twice
    POST /v1/builds/<ns>/<name>/<uid>/done    body: manifest   -> 204 (again: 204)

Answers: 401 unknown build or wrong token (the reconciler may not have registered the
run yet), 503 not serving (not the leader), both worth retrying; 400 bad request, 409
manifest refused or upload already finished, 413 over a cap, all final.

The server is farm.httpserver's: request heads arrive within a timeout, connections and
handler threads are capped (``ControllerConfig.artifact_http``), paths are read in one
canonical form, the token is checked before any body is read, and a blob goes to disk
in 1 MiB pieces as it arrives, never whole in memory.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from farm.httpserver import (
    BoundedHandler,
    BoundedServer,
    HttpLimits,
    PathError,
    canonical_path,
    content_length,
)
from farm.k8s.uploads import SESSION_TTL, Session, Sessions
from farm.records import Artifact, Refusal
from farm.spec import OutputLimits
from farm.store import Store, TooLarge

#: How often ``expect`` prunes expired sessions (besides at start).
PRUNE_EVERY = 3600.0

#: The digest a collector names when it sends a blob again (farm.k8s.collector).
DIGEST_HEADER = "X-Farm-SHA256"


class Manifest(BaseModel):
    artifacts: list[Artifact]
    refused: list[Refusal] = []
    #: The source's Cargo.lock (path "Cargo.lock"), uploaded like an artifact but not
    #: one: the provenance lists its crates (farm.provenance.lockfile).
    lockfile: Artifact | None = None


class Closed(Exception):
    """The session's manifest is accepted: it takes no more blobs (409)."""


class Mismatch(Exception):
    """A re-sent blob's body is not the digest the collector named (400)."""


class Ledger:
    """Upload sessions by build key ``ns/name/uid``, kept in the store's directory
    (farm.k8s.uploads) so that a restarted controller goes on where the last one
    stopped: the same token is accepted, the blobs delivered count, and the caps count
    what was charged before. Thread-safe within one process (the leader's)."""

    def __init__(
        self,
        store: Store,
        on_finish: Callable[[str], None] = lambda key: None,
        ttl: float = SESSION_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.on_finish = on_finish
        self.sessions = Sessions(store.home / "k8s-uploads.sqlite", ttl, clock)
        self.sessions.prune()
        #: Manifests of controllers before durable sessions; read, then forgotten.
        self.manifests = store.home / "k8s-manifests"
        self.clock, self.ttl = clock, ttl
        self._pruned = clock()
        #: Bytes of uploads still streaming, counted against the room left. In memory
        #: only: a restart ends those streams, and the collector re-sends them.
        self._promised: dict[str, int] = {}
        self._lock = threading.Lock()

    def _manifest_path(self, key: str) -> Path:
        return self.manifests / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def expect(self, key: str, token: str, limits: OutputLimits) -> None:
        """Accept uploads for ``key`` with ``token`` (idempotent; keeps progress, also
        across restarts). Prunes expired sessions now and then."""
        self.sessions.open(key, token, limits)
        if self.clock() - self._pruned > min(self.ttl, PRUNE_EVERY):
            self._pruned = self.clock()
            self.sessions.prune()

    def result(self, key: str) -> Manifest | None:
        session = self.sessions.get(key)
        if session is not None and session.manifest is not None:
            return Manifest.model_validate_json(session.manifest)
        path = self._manifest_path(key)
        return Manifest.model_validate_json(path.read_bytes()) if path.exists() else None

    def forget(self, key: str) -> None:
        self.sessions.forget(key)
        self._manifest_path(key).unlink(missing_ok=True)

    def session(self, key: str, token: str) -> Session | None:
        return self.sessions.find(key, token)

    def put_blob(
        self, session: Session, body: Any, length: int, declared: str | None = None
    ) -> tuple[str, int]:
        """Store one blob. ``declared`` is the digest a re-sending collector names: if
        the session holds that blob already, the body is checked, not charged again.
        Raises TooLarge past a cap, Closed once the manifest is in, Mismatch."""
        if session.manifest is not None:
            raise Closed("this upload is finished: its manifest was accepted")
        if declared and self.sessions.blobs(session.key).get(declared) == length:
            return self._again(body, length, declared)
        key = session.key
        # The length is promised before the body is read, so uploads running at once
        # cannot each see the same room left.
        with self._lock:
            fresh = self.sessions.get(key) or session
            limits = fresh.limits
            if fresh.blobs > limits.max_files:  # the files, and the lockfile
                raise TooLarge(f"more than {limits.max_files + 1} distinct blobs")
            left = limits.max_total - fresh.total - self._promised.get(key, 0)
            room = min(limits.max_file, left)
            if length > room:
                raise TooLarge(f"{length} bytes exceeds the {room} bytes left")
            self._promised[key] = self._promised.get(key, 0) + length
        try:
            sha, size = self.store.put_stream(_Exact(body, length), limit=room)
            self.sessions.add_blob(key, sha, size)
        finally:
            with self._lock:
                self._promised[key] -= length
                if not self._promised[key]:
                    del self._promised[key]
        if declared and declared != sha:
            raise Mismatch(f"the body's digest is {sha}, not {declared}")
        return sha, size

    def _again(self, body: Any, length: int, declared: str) -> tuple[str, int]:
        """A blob the session holds, sent again: hashed, not stored or charged twice."""
        reader = _Exact(body, length)
        if self.store.blob_path(declared).exists():
            digest = hashlib.sha256()
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
            sha = digest.hexdigest()
        else:  # lost from the volume: store it again, at the size already charged
            sha, _ = self.store.put_stream(reader, limit=length)
        if sha != declared:
            raise Mismatch(f"the body's digest is {sha}, not {declared}")
        return sha, length

    def finish(self, key: str, session: Session, manifest: Manifest) -> str | None:
        """Accept the manifest, or return why not. The same manifest again is accepted
        (a collector re-sending after a lost answer); another one is not."""
        text = manifest.model_dump_json()
        if session.manifest is not None:
            return None if session.manifest == text else "this upload is already finished"
        if len(manifest.artifacts) > session.limits.max_files:
            return f"more than {session.limits.max_files} artifacts"
        problem = self._verify(key, manifest)
        if problem:
            return problem
        stands = self.sessions.finish(key, text)
        if stands != text:  # another finish won the race, or the Build was torn down
            return "this upload is already finished" if stands else "unknown build"
        self.on_finish(key)
        return None

    def _verify(self, key: str, manifest: Manifest) -> str | None:
        """Each entry names a blob this session was delivered, and the store's copy
        still has that digest and size (re-hashed: the volume outlived a restart)."""
        held = self.sessions.blobs(key)
        checked: set[str] = set()
        for art in [*manifest.artifacts, *([manifest.lockfile] if manifest.lockfile else [])]:
            if held.get(art.sha256) != art.size:
                return f"{art.path}: no uploaded blob with that digest and size"
            if art.sha256 not in checked and _digest(self.store.blob_path(art.sha256)) != (
                art.sha256,
                art.size,
            ):
                return f"{art.path}: the stored blob is missing or damaged; upload it again"
            checked.add(art.sha256)
        return None


def _digest(path: Path) -> tuple[str, int] | None:
    digest, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError:
        return None
    return digest.hexdigest(), size


class _Exact:
    """A reader that yields exactly ``length`` bytes of the request body."""

    def __init__(self, raw: Any, length: int) -> None:
        self.raw, self.left = raw, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.raw.read(n) if n else b""
        if n and not data:
            raise ConnectionError("upload ended early")
        self.left -= len(data)
        return data


class _Handler(BoundedHandler):
    server: ArtifactServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet; errors go to callers
        pass

    def _reply(self, code: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _length(self) -> int:
        """The request's Content-Length, or -1 when it is missing or ambiguous."""
        return content_length(self.headers) if "Content-Length" in self.headers else -1

    def _route(self) -> tuple[str, Session, str] | None:
        if not self.server.ready():  # a standby, or a leader not yet serving: try again
            self.close_connection = True
            self._reply(503, {"error": "this controller is not serving uploads now"})
            return None
        try:
            path, _ = canonical_path(self.target)
        except PathError as exc:
            self._reply(400, {"error": f"request path: {exc}"})
            return None
        parts = path.split("/")[1:]
        if len(parts) != 6 or parts[:2] != ["v1", "builds"]:
            self._reply(404, {"error": "unknown path"})
            return None
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        key = "/".join(parts[2:5])
        session = self.server.ledger.session(key, token)
        if session is None:
            self._reply(401, {"error": "unknown build or wrong token"})
            return None
        return key, session, parts[5]

    def do_GET(self) -> None:
        if self.target == "/readyz":  # the Service routes uploads only to the leader
            self._reply(200 if self.server.ready() else 503, {})
        else:
            self._reply(404, {"error": "unknown path"})

    def do_PUT(self) -> None:
        routed = self._route()
        if routed is None:
            return
        _, session, action = routed
        length = self._length()
        if action != "blobs" or length < 0:
            self._reply(400, {"error": "PUT …/blobs with a Content-Length"})
            return
        declared = self.headers.get(DIGEST_HEADER) or None
        try:
            sha, size = self.server.ledger.put_blob(session, self.rfile, length, declared)
        except TooLarge as exc:
            self.close_connection = True
            self._reply(413, {"error": str(exc)})
            return
        except Closed as exc:
            self.close_connection = True
            self._reply(409, {"error": str(exc)})
            return
        except Mismatch as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(200, {"sha256": sha, "size": size})

    def do_POST(self) -> None:
        routed = self._route()
        if routed is None:
            return
        key, session, action = routed
        length = self._length()
        if action != "done" or not 0 < length <= 16 << 20:
            self._reply(400, {"error": "POST …/done with a manifest of at most 16 MiB"})
            return
        try:
            manifest = Manifest.model_validate_json(self.rfile.read(length))
        except ValidationError as exc:
            self._reply(400, {"error": f"bad manifest: {exc.error_count()} errors"})
            return
        problem = self.server.ledger.finish(key, session, manifest)
        self._reply(409 if problem else 204, {"error": problem} if problem else None)


class ArtifactServer(BoundedServer):
    def __init__(
        self,
        ledger: Ledger,
        host: str = "0.0.0.0",
        port: int = 8443,
        ready: Callable[[], bool] = lambda: True,
        limits: HttpLimits | None = None,
    ) -> None:
        self.ledger = ledger
        self.ready = ready
        super().__init__((host, port), _Handler, limits)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ArtifactServer:
        threading.Thread(target=self.serve_forever, name="artifacts", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

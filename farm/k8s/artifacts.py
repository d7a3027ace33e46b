"""The controller's artifact endpoint: collectors upload a build's outputs here.

Callers: ``farm.k8s.controller`` runs one :class:`ArtifactServer`; ``farm.k8s.reconcile``
registers each build's token with :meth:`Ledger.expect` and reads the finished upload
with :meth:`Ledger.result`; ``farm.k8s.collector`` (in the build pod) is the client.

Nothing the collector says is trusted beyond its token: the controller hashes every
blob itself while writing it to the content-addressed store, caps each blob and the
total with the Build's own limits, and accepts the final manifest only if every entry
names a blob this upload session delivered with that exact digest and size.

    PUT  /v1/builds/<ns>/<name>/<uid>/blobs   body: one file   -> {"sha256", "size"}
    POST /v1/builds/<ns>/<name>/<uid>/done    body: manifest   -> 204

The server is farm.httpserver's: request heads arrive within a timeout, connections and
handler threads are capped (``ControllerConfig.artifact_http``), paths are read in one
canonical form, the token is checked before any body is read, and a blob goes to disk
in 1 MiB pieces as it arrives, never whole in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
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
from farm.records import Artifact, Refusal
from farm.spec import OutputLimits
from farm.store import Store, TooLarge


class Manifest(BaseModel):
    artifacts: list[Artifact]
    refused: list[Refusal] = []
    #: The source's Cargo.lock (path "Cargo.lock"), uploaded like an artifact but not
    #: one: the provenance lists its crates (farm.provenance.lockfile).
    lockfile: Artifact | None = None


@dataclass
class _Session:
    token: str
    limits: OutputLimits
    blobs: dict[str, int] = field(default_factory=dict)
    total: int = 0
    #: Bytes of uploads still streaming, counted against the room left.
    promised: int = 0
    result: Manifest | None = None


class Ledger:
    """Upload sessions by build key ``ns/name/uid``; thread-safe. A finished manifest is
    also written under ``store.home/k8s-manifests`` so a restarted controller still has
    it (the blobs themselves are already in the store)."""

    def __init__(self, store: Store, on_finish: Callable[[str], None] = lambda key: None) -> None:
        self.store = store
        self.on_finish = on_finish
        self.manifests = store.home / "k8s-manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def _manifest_path(self, key: str) -> Path:
        return self.manifests / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def expect(self, key: str, token: str, limits: OutputLimits) -> None:
        """Accept uploads for ``key`` with ``token`` (idempotent; keeps progress)."""
        with self._lock:
            if key not in self._sessions or self._sessions[key].token != token:
                self._sessions[key] = _Session(token, limits)

    def result(self, key: str) -> Manifest | None:
        with self._lock:
            session = self._sessions.get(key)
            if session and session.result:
                return session.result
        path = self._manifest_path(key)
        return Manifest.model_validate_json(path.read_bytes()) if path.exists() else None

    def forget(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)
        self._manifest_path(key).unlink(missing_ok=True)

    def session(self, key: str, token: str) -> _Session | None:
        with self._lock:
            session = self._sessions.get(key)
        if session is None or not hmac.compare_digest(session.token.encode(), token.encode()):
            return None
        return session

    def put_blob(self, session: _Session, body: Any, length: int) -> tuple[str, int]:
        """Store one blob; raises TooLarge past the per-file or total cap."""
        # The length is promised before the body is read, so uploads running at once
        # cannot each see the same room left.
        with self._lock:
            left = session.limits.max_total - session.total - session.promised
            room = min(session.limits.max_file, left)
            if length > room:
                raise TooLarge(f"{length} bytes exceeds the {room} bytes left")
            session.promised += length
        try:
            sha, size = self.store.put_stream(_Exact(body, length), limit=room)
        finally:
            with self._lock:
                session.promised -= length
        with self._lock:
            if sha not in session.blobs:
                session.total += size
            session.blobs[sha] = size
        return sha, size

    def finish(self, key: str, session: _Session, manifest: Manifest) -> str | None:
        """Accept the manifest, or return why not."""
        if len(manifest.artifacts) > session.limits.max_files:
            return f"more than {session.limits.max_files} artifacts"
        for art in [*manifest.artifacts, *([manifest.lockfile] if manifest.lockfile else [])]:
            if session.blobs.get(art.sha256) != art.size:
                return f"{art.path}: no uploaded blob with that digest and size"
        with self._lock:
            session.result = manifest
        path = self._manifest_path(key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(manifest.model_dump_json())
        os.replace(tmp, path)
        self.on_finish(key)
        return None


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

    def _route(self) -> tuple[str, _Session, str] | None:
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
        try:
            sha, size = self.server.ledger.put_blob(session, self.rfile, length)
        except TooLarge as exc:
            self.close_connection = True
            self._reply(413, {"error": str(exc)})
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

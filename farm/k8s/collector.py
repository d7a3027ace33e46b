"""The collector: runs in the build pod after the build container has exited, and
uploads the declared outputs to the controller (``python -m farm.k8s.collector``).

Callers: the build Job's ``collector`` container (``farm.k8s.objects``). It applies the
same rules as a local build (``farm.collect``: lstat, O_NOFOLLOW, fstat re-check, caps,
no links or FIFOs) and the same default outputs (``farm.ecosystems``), but instead of a
local store its ``put_stream`` uploads each file to ``farm.k8s.artifacts``. Its token
comes from a Secret mounted only into this container; the build container never sees
it. Exit status: 0 uploaded, 1 refused by the controller, 4 unreachable. A controller
restart mid-collect is survived: each request is retried with backoff until the
operator's collect deadline (docs/kubernetes.md, "Restarts").
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from farm import ecosystems, policy
from farm.collect import collect, open_no_follow
from farm.errors import FarmError
from farm.records import Artifact
from farm.spec import OutputLimits
from farm.store import TooLarge


class UploadError(FarmError):
    """The controller refused a request for good (400, 403, 409, ...): not retried."""


class GaveUp(UploadError):
    """The controller stayed unreachable or not ready until the collect deadline."""


#: Answers worth another try: 401 and 404 (a controller that restarted or took over
#: has not registered this run yet), 429, and 502-504 (not serving now). 400, 403, 409
#: and 413 are the controller's final word on that request.
RETRY_STATUSES = frozenset({401, 404, 429, 502, 503, 504})

#: The digest a re-sent blob names (farm.k8s.artifacts.DIGEST_HEADER).
DIGEST_HEADER = "X-Farm-SHA256"

#: The collect deadline when the Job gives none (ControllerConfig.collect_retry_seconds).
DEFAULT_DEADLINE = 240.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff, from ``first`` doubling up to ``cap`` seconds between
    tries, until ``deadline`` seconds after the collector started."""

    deadline: float
    first: float = 0.25
    cap: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = min(self.cap, self.first * 2**attempt)
        return min(self.cap, max(wait, retry_after or 0.0))


class Uploader:
    """Duck-typed stand-in for ``Store`` in ``farm.collect``: stores by uploading.
    Every request is retried (as a whole, its body re-read) on connection errors and
    RETRY_STATUSES until the collect deadline; the controller makes each one safe to
    repeat (farm.k8s.artifacts)."""

    def __init__(
        self,
        base_url: str,
        build: str,
        token: str,
        backoff: Backoff,
        timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port = url.hostname or "", url.port or 80
        self.prefix = f"/v1/builds/{build}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.backoff, self.timeout, self.clock = backoff, timeout, clock
        self.ends = clock() + backoff.deadline
        #: Each retried answer or error, for the log and the tests.
        self.retries: list[str] = []

    def _once(
        self, method: str, path: str, body: object, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None]:
        left = max(1.0, min(self.timeout, self.ends - self.clock()))
        conn = http.client.HTTPConnection(self.host, self.port, timeout=left)
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers)  # type: ignore[arg-type]
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Retry-After")
        finally:
            conn.close()

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | BinaryIO,
        length: int,
        again: Callable[[], dict[str, str]] = dict,
    ) -> dict:
        """Send until an answer is final. ``again`` rewinds the body before a retry and
        gives headers to add. Raises TooLarge (413), UploadError, GaveUp."""
        headers = {**self.headers, "Content-Length": str(length)}
        attempt = 0
        while True:
            retry_after = None
            try:
                status, data, retry_after = self._once(method, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{method} {path}: {exc or type(exc).__name__}"
            else:
                if status not in RETRY_STATUSES:
                    return _answer(method, path, status, data)
                problem = f"{method} {path}: {status} {data[:200]!r}"
            wait = self.backoff.delay(attempt, _seconds(retry_after))
            if self.clock() + wait > self.ends:
                raise GaveUp(f"{problem}; gave up after the {self.backoff.deadline:g}s deadline")
            self.retries.append(problem)
            print(f"collector: {problem}; again in {wait:.2f}s", file=sys.stderr)
            time.sleep(wait)
            attempt += 1
            headers.update(again())

    def put_stream(self, src: BinaryIO, limit: int) -> tuple[str, int]:
        """Upload one open file; the controller's digest is the one recorded. A re-send
        names the file's digest, so a blob the controller already holds is not charged
        against the caps twice."""
        size = os.fstat(src.fileno()).st_size
        if size > limit:
            raise TooLarge(f"{size} bytes is more than {limit}")
        start = src.tell()

        def again() -> dict[str, str]:
            src.seek(start)
            digest = hashlib.sha256()
            while chunk := src.read(1 << 20):
                digest.update(chunk)
            src.seek(start)
            return {DIGEST_HEADER: digest.hexdigest()}

        reply = self._request("PUT", "/blobs", src, size, again)
        return str(reply["sha256"]), int(reply["size"])

    def finish(self, artifacts: list, refused: list, lockfile: Artifact | None = None) -> None:
        manifest = {
            "artifacts": [a.model_dump() for a in artifacts],
            "refused": [r.model_dump() for r in refused],
            "lockfile": lockfile.model_dump() if lockfile else None,
        }
        body = json.dumps(manifest).encode()
        self._request("POST", "/done", body, len(body))


def _answer(method: str, path: str, status: int, data: bytes) -> dict:
    if status == 413:
        raise TooLarge(data.decode(errors="replace"))
    if status >= 300:
        raise UploadError(f"{method} {path}: {status} {data[:200]!r}")
    return json.loads(data) if data else {}


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the HTTP-date form is not used by farm's servers)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def outputs(declared: str, source: Path) -> list[str]:
    """The Build's output globs, else its ecosystem's defaults (as locally: a cargo
    project's binaries)."""
    globs = [g for g in declared.split(",") if g]
    ecosystem = None if globs else ecosystems.detect(source)
    return ecosystem.default_outputs(source, None) if ecosystem else globs


#: A Cargo.lock past this is not listed (real ones are far smaller).
MAX_LOCKFILE = 4 << 20


def upload_lockfile(uploader: Uploader, src: Path) -> Artifact | None:
    """Upload the source's Cargo.lock, for the provenance's crate list. The fetch phase
    wrote it and the build saw it read-only, but the repository chose what it is: a
    link, a non-file or an oversized file is not uploaded (O_NOFOLLOW, fstat)."""
    try:
        fh = open_no_follow(src / "Cargo.lock")
    except OSError:
        return None
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        try:
            sha, size = uploader.put_stream(fh, limit=MAX_LOCKFILE)
        except TooLarge:
            return None
    return Artifact(path="Cargo.lock", sha256=sha, size=size)


def run(environ: dict[str, str], root: Path = Path("/")) -> int:
    """Collect and upload. Exit status: 0 uploaded, 1 refused by the controller, 4 the
    controller unreachable (or not accepting) until ``FARM_COLLECT_DEADLINE`` seconds."""
    token = Path(environ["FARM_TOKEN_FILE"]).read_text().strip()
    deadline = float(environ.get("FARM_COLLECT_DEADLINE") or DEFAULT_DEADLINE)
    uploader = Uploader(
        environ["FARM_ARTIFACT_URL"], environ["FARM_BUILD"], token, Backoff(deadline)
    )
    limits = OutputLimits.model_validate_json(environ.get("FARM_LIMITS") or "{}")
    dirs = _Dirs(root)
    globs = outputs(environ.get("FARM_OUTPUTS", ""), dirs.src)
    try:
        found = collect(dirs, globs, limits, uploader)  # type: ignore[arg-type]
        uploader.finish(found.artifacts, found.refused, upload_lockfile(uploader, dirs.src))
    except GaveUp as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 4
    except UploadError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1
    return 0


class _Dirs(policy.BuildDirs):
    """The pod's mount points in BuildDirs' shape."""

    @property
    def src(self) -> Path:
        return self.root / policy.SRC.lstrip("/")

    @property
    def target(self) -> Path:
        return self.root / policy.TARGET.lstrip("/")

    @property
    def out(self) -> Path:
        return self.root / policy.OUT.lstrip("/")


if __name__ == "__main__":
    sys.exit(run(dict(os.environ)))

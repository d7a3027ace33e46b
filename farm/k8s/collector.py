"""The collector: runs in the build pod after the build container has exited, and
uploads the declared outputs to the controller (``python -m farm.k8s.collector``).

Callers: the build Job's ``collector`` container (``farm.k8s.objects``). It applies the
same rules as a local build (``farm.collect``: lstat, O_NOFOLLOW, fstat re-check, caps,
no links or FIFOs) and the same default outputs (``farm.ecosystems``), but instead of a
local store its ``put_stream`` uploads each file to ``farm.k8s.artifacts``. Its token
comes from a Secret mounted only into this container; the build container never sees
it. Exit status: 0 uploaded, 1 refused by the controller, 4 unreachable.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import sys
import time
import urllib.parse
from pathlib import Path
from typing import BinaryIO

from farm import ecosystems, policy
from farm.collect import collect, open_no_follow
from farm.errors import FarmError
from farm.records import Artifact
from farm.spec import OutputLimits
from farm.store import TooLarge


class UploadError(FarmError):
    pass


class Uploader:
    """Duck-typed stand-in for ``Store`` in ``farm.collect``: stores by uploading."""

    def __init__(self, base_url: str, build: str, token: str, timeout: float = 60.0) -> None:
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port = url.hostname or "", url.port or 80
        self.prefix = f"/v1/builds/{build}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = timeout

    def _request(self, method: str, path: str, body: object, length: int) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            headers = {**self.headers, "Content-Length": str(length)}
            conn.request(method, self.prefix + path, body=body, headers=headers)  # type: ignore[arg-type]
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status == 413:
            raise TooLarge(data.decode(errors="replace"))
        if response.status >= 300:
            raise UploadError(f"{method} {path}: {response.status} {data[:200]!r}")
        return json.loads(data) if data else {}

    def put_stream(self, src: BinaryIO, limit: int) -> tuple[str, int]:
        """Upload one open file; the controller's digest is the one recorded."""
        size = os.fstat(src.fileno()).st_size
        if size > limit:
            raise TooLarge(f"{size} bytes is more than {limit}")
        reply = self._request("PUT", "/blobs", src, size)
        return str(reply["sha256"]), int(reply["size"])

    def finish(self, artifacts: list, refused: list, lockfile: Artifact | None = None) -> None:
        manifest = {
            "artifacts": [a.model_dump() for a in artifacts],
            "refused": [r.model_dump() for r in refused],
            "lockfile": lockfile.model_dump() if lockfile else None,
        }
        body = json.dumps(manifest).encode()
        self._request("POST", "/done", body, len(body))


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


def run(environ: dict[str, str], root: Path = Path("/"), attempts: int = 5) -> int:
    token = Path(environ["FARM_TOKEN_FILE"]).read_text().strip()
    uploader = Uploader(environ["FARM_ARTIFACT_URL"], environ["FARM_BUILD"], token)
    limits = OutputLimits.model_validate_json(environ.get("FARM_LIMITS") or "{}")
    dirs = _Dirs(root)
    globs = outputs(environ.get("FARM_OUTPUTS", ""), dirs.src)
    for attempt in range(attempts):
        try:
            found = collect(dirs, globs, limits, uploader)  # type: ignore[arg-type]
            uploader.finish(found.artifacts, found.refused, upload_lockfile(uploader, dirs.src))
            return 0
        except UploadError as exc:
            print(f"collector: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # the collect NetworkPolicy may not be in place yet
            print(f"collector: attempt {attempt + 1}: {exc}", file=sys.stderr)
            time.sleep(min(30, 2**attempt))
    return 4


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

"""Serve a mirror directory as a crates.io-compatible sparse registry over HTTP.

Callers: ``farm mirror serve`` (farm.cli), the tests' real-crate fixtures and anything
that needs a loopback registry (the fetch phase's tests, the corpus). Runs on farm's own
bounded server (``farm.httpserver``), so its connection, head-size and timeout limits
are those of ``farm serve``.

Only three shapes of path are answered, each checked against cargo's own spelling of
names and versions before a file name is built from it:

- ``/index/config.json``: generated, with this server's own address in ``dl``;
- ``/index/<cargo index path of NAME>``: the index file (``1/a``, ``3/a/abc``, ``se/rd/serde``);
- ``/crates/NAME/NAME-VERSION.crate``: the crate (the ``dl`` template points here).

Everything else is 404, and a request target with two readings (``..``, ``%2e%2e``,
``//``, ``\\``, NUL, an encoded ``/``) is 400 (``canonical_path``). Files are opened
below the mirror's directory descriptor one component at a time with ``O_NOFOLLOW``,
so not even a symlink placed inside the mirror leads out of it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import stat
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any

from farm.errors import InputError, MirrorError
from farm.httpserver import (
    BoundedHandler,
    BoundedServer,
    FileBody,
    HttpLimits,
    PathError,
    body_length,
    canonical_path,
)
from farm.mirror.layout import INDEX_DIR, check_name, check_version, crate_filename, index_relpath
from farm.mirror.store import Mirror

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class MirrorServer(BoundedServer):
    """A running mirror: ``index_url`` is what cargo's ``registry =`` takes."""

    def __init__(
        self,
        mirror: Mirror,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: HttpLimits | None = None,
    ) -> None:
        mirror.check()
        if _is_wildcard(host):
            raise InputError(
                f"--listen {host}: give the address clients will use (for example "
                "127.0.0.1:8771); it is written into the registry's config.json"
            )
        self.mirror = mirror
        super().__init__((host, port), _Handler, limits)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def index_url(self) -> str:
        """cargo's spelling of this registry: ``sparse+http://HOST:PORT/index/``."""
        return f"sparse+{self.base_url}/{INDEX_DIR}/"

    def config_json(self) -> bytes:
        dl = f"{self.base_url}/crates/{{crate}}/{{crate}}-{{version}}.crate"
        return json.dumps({"dl": dl}).encode() + b"\n"

    def start(self) -> MirrorServer:
        """Serve on a daemon thread (tests, fixtures); ``shutdown()`` stops it."""
        threading.Thread(target=self.serve_forever, name="farm-mirror", daemon=True).start()
        return self


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class _Handler(BoundedHandler):
    server: MirrorServer
    server_version = "farm-mirror"

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        status, content_type, body = self._resolve()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(body_length(body)))
            self.end_headers()
            if send_body:
                self.write_body(body)
        finally:
            if isinstance(body, FileBody):
                body.file.close()

    def _resolve(self) -> tuple[int, str, bytes | FileBody]:
        try:
            path, _ = canonical_path(self.target)
        except PathError as exc:
            return HTTPStatus.BAD_REQUEST, "text/plain", f"bad request path: {exc}\n".encode()
        relpath = route(path)
        if relpath == "config.json":
            return HTTPStatus.OK, "application/json", self.server.config_json()
        body = None if relpath is None else open_below(self.server.mirror.path, relpath)
        if body is None:
            return HTTPStatus.NOT_FOUND, "text/plain", b"not found\n"
        kind = "text/plain" if relpath.startswith(INDEX_DIR + "/") else "application/x-tar"
        return HTTPStatus.OK, kind, body


def route(path: str) -> str | None:
    """The mirror-relative file a canonical request path names, ``"config.json"`` for the
    generated config, or None (404). Names and versions are checked before use."""
    parts = path.split("/")[1:]
    if parts == [INDEX_DIR, "config.json"]:
        return "config.json"
    with contextlib.suppress(MirrorError):
        if parts[0] == INDEX_DIR and len(parts) >= 3:
            name = parts[-1]
            if name == name.lower() and "/".join(parts[1:]) == index_relpath(name):
                return "/".join(parts)
        if parts[0] == "crates" and len(parts) == 3:
            name = check_name(parts[1])
            stem = parts[2].removesuffix(".crate")
            prefix = f"{name}-"
            if parts[2].endswith(".crate") and stem.startswith(prefix):
                return crate_filename(name, check_version(name, stem[len(prefix) :]))
    return None


def open_below(root: Path, relpath: str) -> FileBody | None:
    """Open the regular file ``relpath`` below ``root`` without following any link in
    it; None if it is missing or anything but a regular file reached through real
    directories."""
    *dirs, leaf = relpath.split("/")
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        for part in dirs:
            fds.append(os.open(part, _DIR, dir_fd=fds[-1]))
        fd = os.open(leaf, _FILE, dir_fd=fds[-1])
    except OSError:  # missing, a symlink (ELOOP), not a directory
        return None
    finally:
        for d in fds:
            os.close(d)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return FileBody(os.fdopen(fd, "rb"), info.st_size)


def serve_until_signal(server: MirrorServer, say: Any) -> None:
    """Run in the foreground until SIGINT/SIGTERM (``farm mirror serve``)."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    say(f"serving {server.mirror.path} at {server.index_url}")
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()

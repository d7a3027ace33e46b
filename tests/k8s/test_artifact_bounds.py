"""The controller's artifact endpoint under hostile clients, over real sockets on
127.0.0.1: idle and slowloris connections are closed after the timeout without a
thread each while /readyz answers, requests beyond the cap get 503, ambiguous paths
are refused before any upload, and a large upload goes to disk with the server's memory
flat (measured in a server subprocess). Bounds poll; nothing waits a fixed time."""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.httpserver import HttpLimits
from farm.k8s.artifacts import ArtifactServer, Ledger
from farm.spec import OutputLimits
from farm.store import Store
from tests.sockets import closed, connect, poll, poll_closed, proc_status, trickle

KEY = "team-a/app/uid-1"
TOKEN = "per-build-token"
TIMEOUT = 10


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[ArtifactServer]:
    ledger = Ledger(Store(tmp_path / "home"))
    ledger.expect(KEY, TOKEN, OutputLimits(max_file=64, max_total=100, max_files=3))
    limits = HttpLimits(timeout_seconds=TIMEOUT, max_connections=2)
    server = ArtifactServer(ledger, "127.0.0.1", 0, limits=limits).start()
    yield server
    server.stop()


def call(server: ArtifactServer, method: str, path: str, body: bytes = b"") -> int:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=60)
    conn.request(method, path, body, {"Authorization": f"Bearer {TOKEN}"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_idle_and_trickling_connections_are_closed_and_readyz_answers(
    endpoint: ArtifactServer,
) -> None:
    host, port = endpoint.server_address[:2]
    threads = threading.active_count()
    opened = time.monotonic()
    idle = connect(host, port, 180)
    trickling = connect(host, port, 20)
    head = f"PUT /v1/builds/{KEY}/blobs HTTP/1.1\r\nX-Slow: ".encode() + b"a" * 10_000
    try:
        for sock in trickling:
            sock.send(head[:1])
        assert call(endpoint, "GET", "/readyz") == 200
        assert threading.active_count() <= threads + 5  # not one per connection
        assert not any(closed(s) for s in idle + trickling)
        first = poll_closed(idle + trickling, trickle(trickling, head))
        assert first >= opened + TIMEOUT, "closed before the timeout"
        assert call(endpoint, "GET", "/readyz") == 200
    finally:
        for sock in idle + trickling:
            sock.close()


def test_uploads_beyond_the_connection_cap_get_503(endpoint: ArtifactServer) -> None:
    host, port = endpoint.server_address[:2]
    stuck = connect(host, port, 2)  # bodies announced, never sent
    try:
        for sock in stuck:
            sock.sendall(
                f"PUT /v1/builds/{KEY}/blobs HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Length: 50\r\n\r\n".encode()
            )
        poll(lambda: call(endpoint, "GET", "/readyz") == 503, "refusing")
    finally:
        for sock in stuck:
            sock.close()
    poll(lambda: call(endpoint, "GET", "/readyz") == 200, "answering again")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/builds/team-a%2Fapp/uid-1/blobs",
        "/v1/builds/team-a/app%2Fuid-1/blobs",
        "/v1//builds/team-a/app/uid-1/blobs",
        "/v1/builds/team-a/./app/uid-1/blobs",
        "/v1/builds/x/../team-a/app/uid-1/blobs",
        "/v1/builds/team-a/app/uid-1/blobs/",
        "/v1/builds/team-a/app/uid-1/%2562lobs",
        "http://127.0.0.1/v1/builds/team-a/app/uid-1/blobs",
    ],
)
def test_ambiguous_paths_upload_nothing(endpoint: ArtifactServer, path: str) -> None:
    assert call(endpoint, "PUT", path, b"hello") in (400, 401, 404)
    assert not list(endpoint.ledger.store.blobs.rglob("*"))


SERVER = """
import sys
from pathlib import Path
from farm.k8s.artifacts import ArtifactServer, Ledger
from farm.spec import OutputLimits
from farm.store import Store
ledger = Ledger(Store(Path(sys.argv[1])))
ledger.expect(sys.argv[2], sys.argv[3], OutputLimits(max_file=1 << 30, max_total=1 << 30))
server = ArtifactServer(ledger, "127.0.0.1", 0)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_a_512_mib_upload_goes_to_disk_with_flat_server_memory(tmp_path: Path) -> None:
    size = 512 << 20
    blob = tmp_path / "blob"
    with blob.open("wb") as fh:
        fh.truncate(size)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path / "home"), KEY, TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        before = proc_status(proc.pid, "VmHWM")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.blocksize = 1 << 20
        with blob.open("rb") as body:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Length": str(size)}
            conn.request("PUT", f"/v1/builds/{KEY}/blobs", body, headers)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
        conn.close()
        grown = proc_status(proc.pid, "VmHWM") - before
        assert grown < 64 << 10, f"peak RSS grew by {grown} KiB for a 512 MiB upload"
        with blob.open("rb") as fh:
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
        assert os.path.getsize(Store(tmp_path / "home").blob_path(sha)) == size
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stdout:
            proc.stdout.close()

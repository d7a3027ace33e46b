"""A build's uploads together stay within its ``max_total`` even when they run at once.
The room left was read before a blob was streamed and counted only after, so a build
holding its upload token could open as many uploads as the server has handler threads,
each of up to ``max_file`` bytes, and store that many times its cap. Real server on
127.0.0.1, raw sockets; the first upload is held open mid-body (its temporary file
exists), so the order is fixed."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.httpserver import HttpLimits
from farm.k8s.artifacts import ArtifactServer, Ledger
from farm.spec import OutputLimits
from farm.store import Store
from tests.sockets import connect, poll

KEY = "team-a/app/uid-1"
TOKEN = "per-build-token"
MAX_FILE, MAX_TOTAL = 64, 100


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[ArtifactServer, Store]]:
    store = Store(tmp_path / "home")
    ledger = Ledger(store)
    ledger.expect(KEY, TOKEN, OutputLimits(max_file=MAX_FILE, max_total=MAX_TOTAL, max_files=3))
    server = ArtifactServer(ledger, "127.0.0.1", 0, limits=HttpLimits(max_connections=8))
    yield server.start(), store
    server.stop()


def head(length: int) -> bytes:
    return (
        f"PUT /v1/builds/{KEY}/blobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def status(sock: object) -> int:
    response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    response.begin()
    return response.status


def test_concurrent_uploads_cannot_store_more_than_max_total(
    endpoint: tuple[ArtifactServer, Store],
) -> None:
    server, store = endpoint
    host, port = server.server_address[:2]
    first, second = connect(host, port, 2)
    try:
        first.sendall(head(MAX_FILE) + b"a" * 10)  # in progress: its body is still coming
        poll(lambda: any(store.blobs.glob(".incoming-*")), "the first upload streaming")
        second.sendall(head(MAX_FILE) + b"b" * MAX_FILE)
        assert status(second) == 413  # 64 of the 100 bytes are promised to the first
        first.sendall(b"a" * (MAX_FILE - 10))
        assert status(first) == 200
    finally:
        first.close()
        second.close()
    stored = sum(p.stat().st_size for p in store.blobs.rglob("*") if p.is_file())
    assert stored <= MAX_TOTAL

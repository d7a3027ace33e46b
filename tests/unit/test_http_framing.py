"""Request framing is read one strict way by both HTTP servers (farm.httpserver's
``content_length``): a Transfer-Encoding, two Content-Lengths, or a Content-Length that
Python's ``int`` would read but a proxy might not (``+5``, `` 5``, ``5_0``) is 400, so a
proxy in front and farm can never disagree about where a request ends. Real sockets to
the real `farm serve` API (tests/unit/apihost.py) and the real artifact endpoint."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.k8s.artifacts import ArtifactServer, Ledger
from farm.queue import Queue
from farm.spec import OutputLimits
from farm.store import Store

from .apihost import Host, start

BODY = b'{"source": "/nonexistent", "argv": ["true"]}'
FRAMINGS = {
    "chunked": b"Transfer-Encoding: chunked\r\nContent-Length: 10\r\n",
    "chunked only": b"Transfer-Encoding: chunked\r\n",
    "two lengths": b"Content-Length: 10\r\nContent-Length: 44\r\n",
    "plus sign": b"Content-Length: +44\r\n",
    "underscore": b"Content-Length: 4_4\r\n",
    "negative": b"Content-Length: -1\r\n",
    "unicode digits": "Content-Length: ٤٤\r\n".encode(),
}


def raw(host: str, port: int, request: bytes) -> int:
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(match.group(1)) if match else 0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, Path]]:
    tmp = tmp_path_factory.mktemp("framing")
    (tmp / "src").mkdir()
    host = start(tmp / "home", tmp / "src")
    try:
        yield host, tmp / "home"
    finally:
        host.stop()


@pytest.mark.parametrize("name", FRAMINGS)
def test_serve_refuses_ambiguous_framing(api: tuple[Host, Path], name: str) -> None:
    host, home = api
    head = b"POST /v1/builds HTTP/1.1\r\nHost: x\r\n" + FRAMINGS[name] + b"\r\n"
    assert raw(host.host, host.port, head + BODY) == 400
    assert Queue(home / "index.sqlite", default_limit=1).entries(limit=10) == []


def test_serve_reads_one_plain_content_length(api: tuple[Host, Path]) -> None:
    host, _ = api
    head = f"POST /v1/builds HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BODY)}\r\n\r\n"
    status = raw(host.host, host.port, head.encode() + BODY)
    assert status == 400  # read whole, then refused for what it says: /nonexistent


KEY, TOKEN = "team-a/app/uid-1", "per-build-token"


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[ArtifactServer]:
    ledger = Ledger(Store(tmp_path / "home"))
    ledger.expect(KEY, TOKEN, OutputLimits(max_file=64, max_total=100, max_files=3))
    server = ArtifactServer(ledger, "127.0.0.1", 0).start()
    yield server
    server.stop()


@pytest.mark.parametrize("name", FRAMINGS)
def test_the_artifact_endpoint_refuses_ambiguous_framing(
    endpoint: ArtifactServer, name: str
) -> None:
    host, port = endpoint.server_address[:2]
    head = f"PUT /v1/builds/{KEY}/blobs HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
    status = raw(str(host), int(port), head.encode() + FRAMINGS[name] + b"\r\n" + b"x" * 44)
    assert status == 400
    assert not list(endpoint.ledger.store.blobs.rglob("*"))


def test_a_non_ascii_token_is_refused_not_a_crash(endpoint: ArtifactServer) -> None:
    host, port = endpoint.server_address[:2]
    head = f"PUT /v1/builds/{KEY}/blobs HTTP/1.1\r\nAuthorization: Bearer tökén\r\n"
    status = raw(str(host), int(port), head.encode() + b"Content-Length: 2\r\n\r\nxx")
    assert status in (401, 403, 404)
    assert not list(endpoint.ledger.store.blobs.rglob("*"))

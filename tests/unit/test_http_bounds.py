"""`farm serve`'s HTTP server under hostile clients, over real sockets to a real server
process (tests/unit/apihost.py): idle and slowloris connections are closed after the
timeout without a thread each, /healthz answers meanwhile, requests beyond the caps are
refused at once, and a 1 GiB artifact or log is streamed without the server's memory
growing. Nothing here waits a fixed time: each check polls with a generous bound."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.httpserver import HttpLimits
from farm.records import Artifact, BuildRecord, Status
from farm.store import Store
from tests import sockets
from tests.sockets import closed, poll, poll_closed, proc_status, trickle

from .apihost import Host, start

GIB = 1 << 30


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Host]]:
    hosts: list[Host] = []

    def make(**limits: float) -> Host:
        (tmp_path / "src").mkdir(exist_ok=True)
        hosts.append(start(tmp_path / "home", tmp_path / "src", None, HttpLimits(**limits)))
        return hosts[-1]

    yield make
    for host in hosts:
        host.stop()


def connect(host: Host, n: int) -> list[socket.socket]:
    return sockets.connect(host.host, host.port, n)


def test_idle_and_trickling_connections_are_closed_and_healthz_answers_meanwhile(
    served: Callable[..., Host],
) -> None:
    timeout = 10
    host = served(timeout_seconds=timeout)
    opened = time.monotonic()
    idle = connect(host, 180)
    trickling = connect(host, 20)  # slowloris: one byte of a request head at a time
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    try:
        for sock in trickling:
            sock.send(head[:1])
        # 200 connections open: /healthz still answers, and none holds a thread.
        assert host.call("GET", "/healthz")[0] == 200
        assert proc_status(host.proc.pid, "Threads") < 10
        assert not any(closed(s) for s in idle + trickling)
        first = poll_closed(idle + trickling, trickle(trickling, head))
        assert first >= opened + timeout, "closed before the timeout"
        assert host.call("GET", "/healthz")[0] == 200
    finally:
        for sock in idle + trickling:
            sock.close()


def test_beyond_the_waiting_cap_the_longest_waiting_connection_is_closed(
    served: Callable[..., Host],
) -> None:
    host = served(timeout_seconds=600, max_waiting=20)
    socks = connect(host, 20)
    later = connect(host, 20)
    try:
        poll(lambda: all(closed(s) for s in socks), "closed")
        assert not any(closed(s) for s in later[1:])
        assert host.call("GET", "/healthz")[0] == 200
    finally:
        for sock in socks + later:
            sock.close()


def test_requests_beyond_the_connection_cap_get_503_at_once(
    served: Callable[..., Host],
) -> None:
    host = served(timeout_seconds=600, max_connections=2)
    # Two requests whose bodies never come: each holds a handler until it times out.
    stuck = connect(host, 2)
    try:
        for sock in stuck:
            sock.sendall(b"POST /v1/builds HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        poll(lambda: host.call("GET", "/healthz")[0] == 503, "refusing")
        for sock in stuck:
            sock.close()
        poll(lambda: host.call("GET", "/healthz")[0] == 200, "answering again")
    finally:
        for sock in stuck:
            sock.close()


def sparse_blob(store: Store, name: str, size: int) -> str:
    """A ``size``-byte blob (a hole: nothing to read from disk) under a made-up digest:
    the API serves what the record names, so the digest need not be the content's."""
    sha = name * 64
    path = store.blob_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size)
    return sha


def download(host: Host, target: str) -> int:
    """Read the whole answer to GET ``target``, keeping none of it; the body's size."""
    with socket.create_connection((host.host, host.port), timeout=120) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(1 << 16)
            assert chunk, buf
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith((b"HTTP/1.0 200 ", b"HTTP/1.1 200 ")), head
        size = len(rest)
        while chunk := sock.recv(1 << 20):
            size += len(chunk)
    return size


def queued_build_with(host: Host, tmp_path: Path, **record: object) -> str:
    """A build submitted over HTTP, with a stored record carrying ``record``'s fields."""
    (tmp_path / "src" / "p").mkdir(parents=True, exist_ok=True)
    data = {"source": str(tmp_path / "src" / "p"), "argv": ["true"], "source_date_epoch": 0}
    status, body = host.call("POST", "/v1/builds", None, json.dumps(data).encode())
    assert status == 202, body
    build_id = json.loads(body)["id"]
    Store(tmp_path / "home").save(
        BuildRecord(
            id=build_id,
            status=Status.SUCCEEDED,
            tenant="default",
            image="farm/rust:bookworm",
            runtime="runsc",
            spec={},
            created_at=datetime.now(UTC),
            **record,  # type: ignore[arg-type]
        )
    )
    return build_id


def test_a_1_gib_artifact_and_log_stream_with_flat_server_memory(
    served: Callable[..., Host], tmp_path: Path
) -> None:
    host = served()
    store = Store(tmp_path / "home")
    artifact, log = sparse_blob(store, "a", GIB), sparse_blob(store, "b", GIB)
    build_id = queued_build_with(
        host,
        tmp_path,
        artifacts=[Artifact(path="out/big", sha256=artifact, size=GIB)],
        log_sha256=log,
    )
    assert host.call("GET", f"/v1/builds/{build_id}/artifacts")[0] == 200
    before = proc_status(host.proc.pid, "VmHWM")  # peak RSS so far, in KiB
    assert download(host, f"/v1/builds/{build_id}/artifacts/out/big") == GIB
    assert download(host, f"/v1/builds/{build_id}/logs?offset=1000") == GIB - 1000
    grown = proc_status(host.proc.pid, "VmHWM") - before
    assert grown < 64 << 10, f"peak RSS grew by {grown} KiB while serving 2 GiB"
    assert os.path.getsize(store.blob_path(artifact)) == GIB


def test_an_artifact_whose_blob_is_gone_is_404(served: Callable[..., Host], tmp_path: Path) -> None:
    host = served()
    gone = Artifact(path="out/gone", sha256="c" * 64, size=3)
    build_id = queued_build_with(host, tmp_path, artifacts=[gone])
    status, body = host.call("GET", f"/v1/builds/{build_id}/artifacts/out/gone")
    assert status == 404 and b"'out/gone' is gone" in body


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--http-timeout", "0"), ("--max-connections", "0"), ("--max-waiting", "-1")],
)
def test_bad_http_settings_are_refused_naming_the_flag(
    flag: str, value: str, tmp_path: Path
) -> None:
    env = {**os.environ, "FARM_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "farm.cli", "serve", "--port", "0", flag, value],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert flag in done.stderr
    assert not (tmp_path / "home" / "serve.lock").exists()

"""A real ``farm serve`` API in its own process for tests that speak raw HTTP to it.

The same :class:`farm.api.Api` and :func:`farm.api.make_server` as ``farm serve``, over a
real Service, Queue and Store in the given FARM_HOME, but with no worker threads and no
dockerd: submitted builds stay queued, so a test can read the queue and the store from
the host side and see exactly what a request changed. Run as::

    python -m tests.unit.apihost HOME SOURCE_ROOT [TOKENS_FILE]

with the server's HttpLimits as JSON in $FARM_TEST_HTTP_LIMITS (default: the defaults).

It prints ``listening on http://HOST:PORT`` on stdout once it accepts connections.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from farm.api import Api, make_server
from farm.backends.local import LocalBackend
from farm.httpserver import HttpLimits
from farm.metrics import Metrics
from farm.queue import Queue
from farm.runner import Runner
from farm.service import Service, SourcePolicy
from farm.settings import Settings
from farm.store import Store
from farm.tokens import load_tokens


def _no_runner(*_: object) -> Runner:
    raise AssertionError("no workers in this test service")


def offline_service(home: Path, source_root: Path, per_tenant: bool) -> Service:
    """The real Service, Queue and Store in ``home``, with no workers and no dockerd."""
    # A docker URL that cannot answer: /metrics then reports what it can without dockerd.
    settings = Settings(home=home, docker_url="unix:///nonexistent/farm-test-docker.sock")
    store = Store(home)  # first: it makes the home the queue's database lives in
    return Service(
        queue=Queue(home / "index.sqlite", default_limit=4),
        store=store,
        backend=LocalBackend(settings),
        runner_factory=_no_runner,
        metrics=Metrics(CollectorRegistry()),
        sources=SourcePolicy(source_root.resolve(), per_tenant=per_tenant),
        concurrency=0,
    )


def main(argv: list[str]) -> None:
    home, source_root = Path(argv[0]), Path(argv[1])
    tokens = load_tokens(Path(argv[2])) if len(argv) > 2 else None
    service = offline_service(home, source_root, per_tenant=tokens is not None)
    limits = HttpLimits.model_validate_json(os.environ.get("FARM_TEST_HTTP_LIMITS") or "{}")
    api = Api(service, service.store, home / "work", tokens)
    server = make_server(api, "127.0.0.1", 0, limits)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])


# The test side: start one and talk to it without a client library that would re-spell paths.


@dataclass
class Host:
    proc: subprocess.Popen
    host: str
    port: int

    def raw(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request`` as is; the status (0 if the server closed without one) and body."""
        with socket.create_connection((self.host, self.port), timeout=60) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(1 << 16):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
        return (int(match.group(1)) if match else 0), body

    def call(
        self, method: str, target: str | bytes, token: str | None = None, body: bytes = b""
    ) -> tuple[int, bytes]:
        line = target if isinstance(target, bytes) else target.encode()
        head = [method.encode() + b" " + line + b" HTTP/1.1", b"Host: 127.0.0.1"]
        if token:
            head.append(f"Authorization: Bearer {token}".encode())
        head += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
        return self.raw(b"\r\n".join(head) + b"\r\n\r\n" + body)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        if self.proc.stdout:
            self.proc.stdout.close()


def start(
    home: Path, source_root: Path, tokens: Path | None = None, limits: HttpLimits | None = None
) -> Host:
    args = [str(home), str(source_root), *([str(tokens)] if tokens else [])]
    env = {**os.environ, "FARM_TEST_HTTP_LIMITS": (limits or HttpLimits()).model_dump_json()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.apihost", *args],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"listening on http://([\d.]+):(\d+)", line)
    assert match, f"apihost did not start: {line!r}"
    return Host(proc, match.group(1), int(match.group(2)))

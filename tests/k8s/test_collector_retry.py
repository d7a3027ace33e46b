"""farm's collector over real HTTP on 127.0.0.1: it retries what a restarting or
not-yet-ready controller answers (connection refused, 401, 404, 503), and never what is
final (400, 403, 413), within the operator's deadline."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from farm.k8s import collector, objects
from farm.k8s.artifacts import ArtifactServer, Ledger
from farm.k8s.config import ControllerConfig
from farm.k8s.uploads import Session
from farm.spec import OutputLimits
from farm.store import Store
from tests.k8s.kubelet import sandbox_tree
from tests.k8s.test_objects import REF, SANDBOX, SPEC

KEY, TOKEN = "team-a/app/uid-1", "token-of-app"
LIMITS = OutputLimits(max_file=64, max_total=100, max_files=3)


class Late(Ledger):
    """The real ledger of a controller whose reconciler registers the run only after the
    collector's first request was refused: as after a restart or a takeover."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.refused = threading.Event()

    def session(self, key: str, token: str) -> Session | None:
        found = super().session(key, token)
        if found is None and not self.refused.is_set():
            self.refused.set()
            self.expect(KEY, TOKEN, LIMITS)  # the reconciler catches up
        return found


def collect(url: str, root: Path, deadline: float = 60.0) -> int:
    (root / "token").write_text(TOKEN)
    env = {
        "FARM_ARTIFACT_URL": url,
        "FARM_BUILD": KEY,
        "FARM_TOKEN_FILE": str(root / "token"),
        "FARM_OUTPUTS": "out/**",
        "FARM_LIMITS": LIMITS.model_dump_json(),
        "FARM_COLLECT_DEADLINE": str(deadline),
    }
    return collector.run(env, root=root)


def test_a_401_then_the_real_controller_accepts(tmp_path: Path) -> None:
    ledger = Late(Store(tmp_path / "home"))
    server = ArtifactServer(ledger, "127.0.0.1", 0).start()
    try:
        root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
        assert collect(server.url, root) == 0
    finally:
        server.stop()
    assert ledger.refused.is_set()
    got = ledger.result(KEY)
    assert got is not None
    assert [(a.path, a.sha256) for a in got.artifacts] == [
        ("out/a.txt", hashlib.sha256(b"alpha").hexdigest())
    ]


class Scripted(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that answers the statuses of ``script`` in turn, then
    as the controller would (the digest and size of a PUT body; 204 for done)."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.seen: list[tuple[str, int, str | None]] = []  # method, status, digest header
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.server.script.pop(0) if self.server.script else 0
        digest = self.headers.get("X-Farm-SHA256")
        if status:
            reply = json.dumps({"error": f"scripted {status}"}).encode()
        elif self.command == "PUT":
            status = 200
            reply = json.dumps(
                {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
            ).encode()
        else:
            status, reply = 204, b""
        self.server.seen.append((self.command, status, digest))
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_PUT = do_POST = _answer


@pytest.fixture
def scripted() -> Iterator[list[Scripted]]:
    servers: list[Scripted] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [401, 404, 503])
def test_a_passing_refusal_is_retried_and_the_re_send_names_its_digest(
    scripted: list[Scripted], tmp_path: Path, status: int
) -> None:
    server = Scripted([status, status])
    scripted.append(server)
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
    assert collect(server.url, root) == 0
    alpha = hashlib.sha256(b"alpha").hexdigest()
    assert server.seen == [
        ("PUT", status, None),
        ("PUT", status, alpha),
        ("PUT", 200, alpha),
        ("POST", 204, None),
    ]


def test_a_refused_manifest_is_retried_too(scripted: list[Scripted], tmp_path: Path) -> None:
    server = Scripted([0, 401])  # the blob goes through; done meets a restart
    scripted.append(server)
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
    assert collect(server.url, root) == 0
    assert [(m, s) for m, s, _ in server.seen] == [("PUT", 200), ("POST", 401), ("POST", 204)]


@pytest.mark.parametrize("status", [400, 403, 409])
def test_a_final_refusal_is_not_retried(
    scripted: list[Scripted], tmp_path: Path, status: int
) -> None:
    server = Scripted([status])
    scripted.append(server)
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
    assert collect(server.url, root) == 1
    assert server.seen == [("PUT", status, None)]


def test_413_refuses_the_file_and_is_not_retried(scripted: list[Scripted], tmp_path: Path) -> None:
    server = Scripted([413])
    scripted.append(server)
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
    assert collect(server.url, root) == 0
    assert [(m, s) for m, s, _ in server.seen] == [("PUT", 413), ("POST", 204)]


def test_the_collector_gives_up_at_the_deadline(scripted: list[Scripted], tmp_path: Path) -> None:
    server = Scripted([503] * 1000)
    scripted.append(server)
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
    assert collect(server.url, root, deadline=1.0) == 4
    # Backoff, not a busy loop: 0.25 + 0.5 s fit in the second, 1 s more does not.
    assert 2 <= len(server.seen) <= 4


def test_a_controller_that_is_not_listening_yet_is_waited_for(tmp_path: Path) -> None:
    ledger = Ledger(Store(tmp_path / "home"))
    ledger.expect(KEY, TOKEN, LIMITS)
    server = ArtifactServer(ledger, "127.0.0.1", 0)
    url = server.url
    server.server_close()  # the port is closed: connections are refused
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(collect(url, root)))
    worker.start()
    port = int(url.rsplit(":", 1)[1])
    server = ArtifactServer(ledger, "127.0.0.1", port).start()
    try:
        worker.join()
    finally:
        server.stop()
    assert result == [0]
    assert ledger.result(KEY) is not None


def test_the_operator_sets_the_collect_deadline_within_the_collect_grace() -> None:
    config = ControllerConfig(collect_retry_seconds=90)
    job = objects.build_job(REF, SPEC, SANDBOX, config, artifact_url="http://10.0.0.1:8443")
    [collector_container] = [
        c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "collector"
    ]
    env = {e["name"]: e.get("value") for e in collector_container["env"]}
    assert env["FARM_COLLECT_DEADLINE"] == "90"
    with pytest.raises(ValueError, match=r"collect_retry_seconds .* collect_grace_seconds"):
        ControllerConfig(collect_retry_seconds=400, collect_grace_seconds=300)

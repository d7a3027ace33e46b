"""Upload sessions outlive a controller restart: the real artifact server on 127.0.0.1 is
stopped mid-upload and a new one (a new Ledger, as a new controller process has) starts
over the same store directory and port; farm's collector finishes against it."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.k8s import collector
from farm.k8s.artifacts import ArtifactServer, Ledger, Manifest
from farm.spec import OutputLimits
from farm.store import Store
from tests.k8s.kubelet import sandbox_tree

KEY, TOKEN = "team-a/app/uid-1", "token-of-app"
OTHER_KEY, OTHER_TOKEN = "team-b/other/uid-2", "token-of-other"
LIMITS = OutputLimits(max_file=64, max_total=100, max_files=3)


class Controller:
    """One controller 'process' after another over the same store and port."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = 0
        self.server: ArtifactServer | None = None

    def start(self, ready: bool = True) -> Ledger:
        ledger = Ledger(Store(self.home))
        self.server = ArtifactServer(ledger, "127.0.0.1", self.port, ready=lambda: ready).start()
        self.port = int(self.server.server_address[1])
        return ledger

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()
        self.server = None

    def restart(self) -> Ledger:
        self.stop()
        return self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    controller = Controller(tmp_path / "home")
    ledger = controller.start()
    ledger.expect(KEY, TOKEN, LIMITS)
    ledger.expect(OTHER_KEY, OTHER_TOKEN, LIMITS)
    yield controller
    if controller.server is not None:
        controller.stop()


def collect(url: str, root: Path, token: str = TOKEN, deadline: float = 60.0) -> int:
    (root / "token").write_text(token)
    env = {
        "FARM_ARTIFACT_URL": url,
        "FARM_BUILD": KEY,
        "FARM_TOKEN_FILE": str(root / "token"),
        "FARM_OUTPUTS": "out/**",
        "FARM_LIMITS": LIMITS.model_dump_json(),
        "FARM_COLLECT_DEADLINE": str(deadline),
    }
    return collector.run(env, root=root)


def request(
    ctl: Controller,
    method: str,
    action: str,
    body: bytes,
    token: str = TOKEN,
    key: str = KEY,
    headers: dict[str, str] | None = None,
) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", ctl.port, timeout=10)
    auth = {"Authorization": f"Bearer {token}", **(headers or {})}
    conn.request(method, f"/v1/builds/{key}/{action}", body, auth)
    status = conn.getresponse().status
    conn.close()
    return status


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(*files: tuple[str, bytes]) -> bytes:
    arts = [{"path": p, "sha256": sha(d), "size": len(d)} for p, d in files]
    return json.dumps({"artifacts": arts}).encode()


def test_a_collect_interrupted_by_a_restart_finishes_with_the_right_digest(
    ctl: Controller, tmp_path: Path
) -> None:
    # An upload begins on the first controller, which then goes away mid-collect.
    assert request(ctl, "PUT", "blobs", b"alpha") == 200
    ctl.stop()
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha", "b.txt": b"beta"})
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(collect(ctl.url, root)))
    worker.start()  # it meets a closed port and backs off
    ledger = ctl.start()  # the new controller has not reconciled the Build yet
    worker.join()
    assert result == [0]
    got = ledger.result(KEY)
    assert got is not None
    assert {a.path: a.sha256 for a in got.artifacts} == {
        "out/a.txt": sha(b"alpha"),
        "out/b.txt": sha(b"beta"),
    }
    for art in got.artifacts:
        assert sha(ledger.store.blob_path(art.sha256).read_bytes()) == art.sha256


def test_blobs_delivered_before_a_restart_count_after_it(ctl: Controller) -> None:
    assert request(ctl, "PUT", "blobs", b"alpha") == 200
    ctl.restart()
    assert request(ctl, "POST", "done", manifest(("out/a", b"alpha"))) == 204


def test_the_total_cap_holds_across_a_restart(ctl: Controller) -> None:
    assert request(ctl, "PUT", "blobs", b"x" * 60) == 200
    ledger = ctl.restart()
    ledger.expect(KEY, TOKEN, LIMITS)  # the reconciler's next pass, as after any restart
    assert request(ctl, "PUT", "blobs", b"y" * 60) == 413
    assert request(ctl, "PUT", "blobs", b"y" * 40) == 200


def test_a_re_sent_blob_is_not_charged_twice_even_at_the_cap(ctl: Controller) -> None:
    # The answer to the first PUT was lost in the restart: the collector sends it again,
    # naming the digest it expects, and the room it already used is not counted twice.
    assert request(ctl, "PUT", "blobs", b"x" * 60) == 200
    ctl.restart()
    again = {"X-Farm-SHA256": sha(b"x" * 60)}
    assert request(ctl, "PUT", "blobs", b"x" * 60, headers=again) == 200
    assert request(ctl, "PUT", "blobs", b"z" * 60, headers={"X-Farm-SHA256": sha(b"x" * 60)}) == 400
    assert request(ctl, "PUT", "blobs", b"y" * 41) == 413  # 60 of 100 still used, once


def test_a_partial_upload_is_never_a_blob(ctl: Controller) -> None:
    # The connection dies half-way through the body (a restart, a dead collector).
    with socket.create_connection(("127.0.0.1", ctl.port)) as sock:
        head = (
            f"PUT /v1/builds/{KEY}/blobs HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"h" * 20)
    ledger = ctl.restart()
    assert request(ctl, "POST", "done", manifest(("out/h", b"h" * 20))) == 409
    assert not ledger.store.blob_path(sha(b"h" * 20)).exists()
    assert request(ctl, "PUT", "blobs", b"w" * 64) == 200  # nothing was charged for it
    assert request(ctl, "PUT", "blobs", b"v" * 36) == 200


def test_a_blob_lost_from_the_store_fails_the_final_check(ctl: Controller) -> None:
    assert request(ctl, "PUT", "blobs", b"alpha") == 200
    ledger = ctl.restart()
    path = ledger.store.blob_path(sha(b"alpha"))
    path.chmod(0o644)
    path.write_bytes(b"alphX")  # damaged on the volume while no controller ran
    assert request(ctl, "POST", "done", manifest(("out/a", b"alpha"))) == 409
    assert ledger.result(KEY) is None


def test_the_token_is_kept_only_as_a_hash(ctl: Controller) -> None:
    assert request(ctl, "PUT", "blobs", b"alpha") == 200
    stored = b"".join(p.read_bytes() for p in ctl.home.glob("k8s-uploads.sqlite*"))
    assert stored and TOKEN.encode() not in stored
    assert sha(TOKEN.encode()).encode() in stored


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (OTHER_TOKEN, "another build's token"),
        ("", "no token"),
        (TOKEN[:-1], "a truncated token"),
        (sha(TOKEN.encode()), "the stored hash itself"),
    ],
)
def test_after_a_restart_a_wrong_token_is_refused(ctl: Controller, token: str, why: str) -> None:
    assert request(ctl, "PUT", "blobs", b"alpha") == 200
    ctl.restart()
    assert request(ctl, "PUT", "blobs", b"evil", token=token) == 401, why
    assert request(ctl, "POST", "done", manifest(("out/a", b"alpha")), token=token) == 401, why
    assert request(ctl, "PUT", "blobs", b"beta") == 200  # the right one still works


def test_a_collected_session_refuses_replays_after_a_restart(ctl: Controller) -> None:
    assert request(ctl, "PUT", "blobs", b"alpha") == 200
    done = manifest(("out/a", b"alpha"))
    assert request(ctl, "POST", "done", done) == 204
    ledger = ctl.restart()
    assert request(ctl, "POST", "done", done) == 204  # the collector re-sends a lost answer
    assert request(ctl, "PUT", "blobs", b"late") == 409
    assert request(ctl, "POST", "done", manifest(("out/b", b"alpha"))) == 409
    got = ledger.result(KEY)
    assert got is not None and [a.path for a in got.artifacts] == ["out/a"]
    ledger.forget(KEY)  # the Build is torn down
    ctl.restart()
    assert request(ctl, "PUT", "blobs", b"late") == 401
    assert request(ctl, "POST", "done", done) == 401


def test_expired_sessions_are_pruned(tmp_path: Path) -> None:
    now = [1000.0]
    ledger = Ledger(Store(tmp_path / "home"), ttl=60, clock=lambda: now[0])
    ledger.expect(KEY, TOKEN, LIMITS)
    ledger.expect(OTHER_KEY, OTHER_TOKEN, LIMITS)
    now[0] += 30
    ledger.expect(OTHER_KEY, OTHER_TOKEN, LIMITS)  # touched: still in use
    now[0] += 31
    assert ledger.session(KEY, TOKEN) is None  # expired, even before it is pruned
    restarted = Ledger(Store(tmp_path / "home"), ttl=60, clock=lambda: now[0])
    assert restarted.sessions.keys() == [OTHER_KEY]


def test_uploads_wait_while_the_controller_is_not_serving(ctl: Controller, tmp_path: Path) -> None:
    ctl.stop()
    ctl.start(ready=False)  # a standby replica, or the leader still starting
    assert request(ctl, "PUT", "blobs", b"alpha") == 503
    assert request(ctl, "POST", "done", manifest(("out/a", b"alpha"))) == 503


def test_the_first_manifest_recorded_stands(ctl: Controller) -> None:
    # Two finishes that both read the session before either wrote (two racing
    # requests): the store keeps the first, and the second learns it lost.
    assert request(ctl, "PUT", "blobs", b"alpha") == 200
    ledger = ctl.restart()
    session = ledger.session(KEY, TOKEN)
    assert session is not None
    first = manifest(("out/a", b"alpha"))
    second = manifest(("out/b", b"alpha"))
    assert ledger.finish(KEY, session, Manifest.model_validate_json(first)) is None
    assert ledger.finish(KEY, session, Manifest.model_validate_json(second)) is not None
    got = ledger.result(KEY)
    assert got is not None and [a.path for a in got.artifacts] == ["out/a"]

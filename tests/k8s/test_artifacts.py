"""The artifact path: farm's collector against the controller's real endpoint over
HTTP on 127.0.0.1, with hostile outputs and hostile clients."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.k8s import collector
from farm.k8s.artifacts import ArtifactServer, Ledger
from farm.spec import OutputLimits
from farm.store import Store
from tests.k8s.kubelet import sandbox_tree

KEY = "team-a/app/uid-1"
TOKEN = "per-build-token"


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[ArtifactServer, Ledger]]:
    ledger = Ledger(Store(tmp_path / "home"))
    ledger.expect(KEY, TOKEN, OutputLimits(max_file=64, max_total=100, max_files=3))
    server = ArtifactServer(ledger, "127.0.0.1", 0).start()
    yield server, ledger
    server.stop()


def run(
    server: ArtifactServer,
    root: Path,
    token: str = TOKEN,
    outputs: str = "out/**",
    deadline: float = 60,
) -> int:
    (root / "token").write_text(token)
    env = {
        "FARM_ARTIFACT_URL": server.url,
        "FARM_BUILD": KEY,
        "FARM_TOKEN_FILE": str(root / "token"),
        "FARM_OUTPUTS": outputs,
        "FARM_LIMITS": OutputLimits(max_file=64, max_total=100, max_files=3).model_dump_json(),
        "FARM_COLLECT_DEADLINE": str(deadline),
    }
    return collector.run(env, root=root)


def request(server: ArtifactServer, method: str, path: str, body: bytes, token: str) -> int:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    conn.request(method, f"/v1/builds/{KEY}/{path}", body, {"Authorization": f"Bearer {token}"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_outputs_arrive_hashed_by_the_controller_and_links_are_refused(
    endpoint: tuple[ArtifactServer, Ledger], tmp_path: Path
) -> None:
    server, ledger = endpoint
    root = sandbox_tree(tmp_path / "pod", {"bin/app": b"A" * 40, "big": b"B" * 65})
    os.symlink("/etc/shadow", root / "out/shadow")
    os.mkfifo(root / "out/pipe")
    os.link(root / "out/bin/app", root / "outside-link")  # a hard link to outside /out
    assert run(server, root) == 0
    manifest = ledger.result(KEY)
    assert manifest is not None
    assert [(a.path, a.sha256) for a in manifest.artifacts] == []  # app is hard-linked out
    refused = {r.path: r.reason for r in manifest.refused}
    assert refused["out/shadow"].startswith("symlink")
    assert refused["out/pipe"].startswith("FIFO")
    assert refused["out/bin/app"].startswith("hard link")
    assert "per-file cap" in refused["out/big"]


def test_a_clean_upload_is_recorded_and_survives_a_controller_restart(
    endpoint: tuple[ArtifactServer, Ledger], tmp_path: Path
) -> None:
    server, ledger = endpoint
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha", "b.txt": b"beta"})
    assert run(server, root) == 0
    again = Ledger(ledger.store)  # a new controller process on the same store
    manifest = again.result(KEY)
    assert manifest is not None
    assert {a.path: a.sha256 for a in manifest.artifacts} == {
        "out/a.txt": hashlib.sha256(b"alpha").hexdigest(),
        "out/b.txt": hashlib.sha256(b"beta").hexdigest(),
    }
    assert ledger.store.blob_path(hashlib.sha256(b"beta").hexdigest()).read_bytes() == b"beta"


def test_the_wrong_token_uploads_nothing(
    endpoint: tuple[ArtifactServer, Ledger], tmp_path: Path
) -> None:
    server, ledger = endpoint
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
    # 401 is retried (a restarted controller may not know the run yet), then given up.
    assert run(server, root, token="guessed", deadline=1) == 4
    assert request(server, "PUT", "blobs", b"x", "") == 401
    assert ledger.result(KEY) is None
    assert not list(ledger.store.blobs.rglob("*"))


def test_a_manifest_naming_blobs_never_uploaded_is_refused(
    endpoint: tuple[ArtifactServer, Ledger],
) -> None:
    server, ledger = endpoint
    forged = {"artifacts": [{"path": "out/app", "sha256": "0" * 64, "size": 5}]}
    assert request(server, "POST", "done", json.dumps(forged).encode(), TOKEN) == 409
    assert request(server, "PUT", "blobs", b"hello", TOKEN) == 200
    claimed = {
        "artifacts": [
            {"path": "out/app", "sha256": hashlib.sha256(b"hello").hexdigest(), "size": 6}
        ]
    }
    assert request(server, "POST", "done", json.dumps(claimed).encode(), TOKEN) == 409
    assert ledger.result(KEY) is None


def test_the_controller_enforces_the_caps_itself(endpoint: tuple[ArtifactServer, Ledger]) -> None:
    server, _ = endpoint
    assert request(server, "PUT", "blobs", b"x" * 65, TOKEN) == 413  # over max_file
    assert request(server, "PUT", "blobs", b"y" * 60, TOKEN) == 200
    assert request(server, "PUT", "blobs", b"z" * 60, TOKEN) == 413  # over max_total


def test_the_sources_cargo_lock_goes_up_but_never_through_a_link(
    endpoint: tuple[ArtifactServer, Ledger], tmp_path: Path
) -> None:
    """The lockfile feeds the provenance's crate list; the repository chose it, so a
    link to something else in the collector's view (its token) is not uploaded."""
    server, ledger = endpoint
    root = sandbox_tree(tmp_path / "pod", {"a.txt": b"alpha"})
    (root / "src/Cargo.lock").write_bytes(b"version = 3\n")
    assert run(server, root) == 0
    manifest = ledger.result(KEY)
    assert manifest is not None and manifest.lockfile is not None
    assert manifest.lockfile.sha256 == hashlib.sha256(b"version = 3\n").hexdigest()
    assert manifest.artifacts[0].path == "out/a.txt" and len(manifest.artifacts) == 1

    ledger.forget(KEY)
    ledger.expect(KEY, TOKEN, OutputLimits(max_file=64, max_total=100, max_files=3))
    linked = sandbox_tree(tmp_path / "pod2", {"a.txt": b"alpha"})
    os.symlink(linked / "token", linked / "src/Cargo.lock")
    assert run(server, linked, token=TOKEN) == 0
    manifest = ledger.result(KEY)
    assert manifest is not None and manifest.lockfile is None
    token_sha = hashlib.sha256(TOKEN.encode()).hexdigest()
    assert not ledger.store.blob_path(token_sha).exists()


def test_a_manifest_naming_a_lockfile_never_uploaded_is_refused(
    endpoint: tuple[ArtifactServer, Ledger],
) -> None:
    server, ledger = endpoint
    forged = {"artifacts": [], "lockfile": {"path": "Cargo.lock", "sha256": "0" * 64, "size": 5}}
    assert request(server, "POST", "done", json.dumps(forged).encode(), TOKEN) == 409
    assert ledger.result(KEY) is None

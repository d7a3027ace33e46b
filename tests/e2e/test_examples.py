"""The bundled examples, built for real in gVisor, with host-side proof for each attack."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from pathlib import Path

import pytest

from farm.store import Store

from .conftest import EXAMPLES, farm, farm_containers, farm_json, run_artifact

SECRET = "farm-e2e-canary-7f3a9c"


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


class Listener:
    """TCP and UDP on one loopback port; records every byte and connection."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.received: list[bytes] = []
        self.tcp.settimeout(0.2)
        self.udp.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
                self.received.append(b"tcp-connect:" + conn.recv(65536))
                conn.close()
            except TimeoutError:
                pass
            with contextlib.suppress(TimeoutError):
                self.received.append(b"udp:" + self.udp.recv(65536))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.tcp.close()
        self.udp.close()


def test_hello_serde_builds_and_its_binary_runs(home: Path, client, tmp_path: Path) -> None:
    code, out = farm_json(home, "build", str(EXAMPLES / "hello-serde"), "--observe")
    assert code == 0, out
    assert out["blocked_actions"] == []  # no false positives from a normal cargo build
    notes = " ".join(Store(home).get(out["id"]).notes)
    assert "(0 dropped by gVisor, 0 undecodable or over the cap)" in notes
    assert [a["path"] for a in out["artifacts"]] == ["target/release/hello-serde"]
    assert farm(home, "artifacts", out["id"], "--dest", str(tmp_path / "a")).returncode == 0
    binary = tmp_path / "a" / "target/release/hello-serde"
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == out["artifacts"][0]["sha256"]
    report = json.loads(run_artifact(client, binary))
    assert "serde" in json.dumps(report)


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


def test_malicious_dep_attacks_all_fail(home: Path, client, tmp_path: Path, listener) -> None:
    source = EXAMPLES / "malicious-dep"
    before = tree_digest(source)
    marker_dir = tmp_path / "host-marker"
    marker_dir.mkdir(mode=0o777)
    marker_dir.chmod(0o777)  # writable by anyone: only the sandbox can keep evil out

    done = farm(
        home,
        "build",
        str(source),
        "--json",
        "--observe",
        "--env",
        f"FARM_DEMO_EXFIL_PORT={listener.port}",
        "--env",
        f"FARM_DEMO_MARKER_DIR={marker_dir}",
        FARM_DEMO_SECRET=SECRET,  # in the CLI's own environment, never passed on
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    log = farm(home, "logs", out["id"]).stdout

    # The attacks really ran (so the assertions below can fail) ...
    for attack in (
        "exfil-tcp",
        "exfil-udp",
        "write /usr/bin/farm-pwned",
        "append ../src/main.rs",
        "create ../src/pwned.rs",
        "write /etc/ld.so.preload",
        "host-marker",
    ):
        assert f"evil: {attack}: denied" in log, attack
    assert "evil: read-env FARM_DEMO_SECRET: denied" in log

    # ... and every one failed, as seen from the host.
    assert listener.received == [], "the loopback listener received data"
    assert list(marker_dir.iterdir()) == [], "a host path was writable"
    assert tree_digest(source) == before, "the victim source changed"
    assert not Path("/usr/bin/farm-pwned").exists()
    assert SECRET not in log and SECRET not in done.stdout + done.stderr
    store = Store(home)
    for _, blob in store.all_blobs():
        assert SECRET.encode() not in blob.read_bytes()
    assert SECRET.encode() not in (home / "index.sqlite").read_bytes()
    assert farm_containers(client, home) == []  # the daemon died with its sandbox

    # gVisor's own record names each attempt and the crate that made it.
    actions = out["blocked_actions"]
    assert {(a["package"], a["version"], a["role"]) for a in actions} == {
        ("evil", "0.3.1", "build script")
    }
    seen = {(a["kind"], a["target"], a["errno"]) for a in actions}
    assert {
        ("fs_write_denied", "/usr/bin/farm-pwned", "EACCES"),
        ("fs_write_denied", "/etc/ld.so.preload", "EACCES"),
        ("fs_write_denied", "/src/src/main.rs", "EACCES"),
        ("fs_write_denied", "/src/src/pwned.rs", "EACCES"),
        ("sensitive_read", "/root/.ssh/id_rsa", "EACCES"),
        ("sensitive_read", "/proc/1/environ", ""),
    } <= seen
    assert {a["kind"] for a in actions} <= {"fs_write_denied", "sensitive_read", "network"}

    # The binary is the clean one.
    art = tmp_path / "art"
    farm(home, "artifacts", out["id"], "--dest", str(art))
    binary = art / "target/release/malicious-dep"
    assert SECRET.encode() not in binary.read_bytes()
    assert run_artifact(client, binary).startswith("malicious-dep: clean binary")

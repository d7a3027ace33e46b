"""The bundled examples, built for real in gVisor, with host-side proof for each attack."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from farm.store import Store

from .conftest import (
    EXAMPLES,
    Listener,
    farm,
    farm_containers,
    farm_json,
    run_artifact,
    tree_digest,
)

SECRET = "farm-e2e-canary-7f3a9c"


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
        "--mode",
        "audit",  # record, and let the result stand: the binary is checked below
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
    exfil = f"127.0.0.1:{listener.port}"
    assert sorted((a["kind"], a["operation"], a["target"], a["errno"]) for a in actions) == sorted(
        [
            ("sensitive_read", "open", "/tmp/home/.ssh/id_rsa", "ENOENT"),
            ("sensitive_read", "open", "/root/.ssh/id_rsa", "EACCES"),
            ("sensitive_read", "open", "/proc/1/environ", ""),
            ("network", "connect", exfil, "EINPROGRESS"),  # tcp, with a timeout
            ("network", "connect", exfil, ""),  # udp: nothing outside answers
            ("fs_write_denied", "open for write", "/usr/bin/farm-pwned", "EACCES"),
            ("fs_write_denied", "open for write", "/usr/lib/rustlib/farm-pwned-marker", "EACCES"),
            ("fs_write_denied", "open for write", "/usr/bin/rustc", "EACCES"),
            ("fs_write_denied", "open for write", "/etc/ld.so.preload", "EACCES"),
            ("fs_write_denied", "open for write", "/src/src/main.rs", "EACCES"),
            ("fs_write_denied", "open for write", "/src/src/pwned.rs", "EACCES"),
            ("persistence", "outlived the build:", "sleep 600", ""),
        ]
    )
    assert {a["protocol"] for a in actions if a["kind"] == "network"} == {"tcp", "udp"}
    assert out["observation"]["mode"] == "audit" and out["status"] == "succeeded"

    # The binary is the clean one.
    art = tmp_path / "art"
    farm(home, "artifacts", out["id"], "--dest", str(art))
    binary = art / "target/release/malicious-dep"
    assert SECRET.encode() not in binary.read_bytes()
    assert run_artifact(client, binary).startswith("malicious-dep: clean binary")

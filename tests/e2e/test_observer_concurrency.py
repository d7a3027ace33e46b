"""Concurrent observed builds on one host: each gets gVisor's record of its own sandbox.

Two shapes, both real dockerd + runsc + the host observer daemon: several ``farm build``
processes at once, and one process running builds in threads with one shared
observer (what ``farm serve`` does).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from farm.backends.local import LocalBackend
from farm.observe.daemon import HostObserver, ObserverPaths, daemon_running
from farm.records import BuildRecord
from farm.runner import Runner
from farm.settings import Settings
from farm.spec import build_spec
from farm.store import Store

from .conftest import farm_env

#: Each build tries a different secret path; gVisor's record must name only its own.
SECRETS = ["/root/.ssh/id_one", "/root/.aws/two", "/tmp/home/.docker/config.json"]


def project(tmp_path: Path) -> Path:
    src = tmp_path / "proj"
    src.mkdir()
    (src / "README").write_text("not a cargo project\n")
    return src


def argv(secret: str) -> list[str]:
    return ["sh", "-c", f"cat {secret} 2>/dev/null; sleep 2; echo done > /out/done"]


def targets(actions: list[dict]) -> set[tuple[str, str]]:
    return {(a["kind"], a["target"]) for a in actions}


def test_concurrent_cli_builds_each_get_their_own_events(home: Path, tmp_path: Path) -> None:
    src = project(tmp_path)
    cli = [sys.executable, "-m", "farm.cli", "build", str(src), "--json", "--mode", "audit"]
    procs = [
        subprocess.Popen(
            [*cli, "--output", "out/done", "--", *argv(secret)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=farm_env(home),
        )
        for secret in SECRETS
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert daemon_running(ObserverPaths())  # started on demand, still serving
    for proc, (stdout, stderr), secret in zip(procs, outs, SECRETS, strict=True):
        assert proc.returncode == 0, stderr
        record = json.loads(stdout)
        assert targets(record["blocked_actions"]) == {("sensitive_read", secret)}


def test_builds_in_threads_share_one_observer(home: Path, tmp_path: Path) -> None:
    src = project(tmp_path)
    settings = Settings(home=home)
    observer = HostObserver()  # one per process, as farm serve holds it
    records: dict[str, BuildRecord] = {}

    def build(secret: str) -> None:
        backend = LocalBackend(settings)
        runner = Runner(settings, backend, Store(home), observer=observer)
        spec = {
            "source": str(src),
            "argv": argv(secret),
            "outputs": ["out/done"],
            "observe": {"mode": "audit"},
        }
        try:
            records[secret] = runner.build(build_spec(spec))
        finally:
            backend.client.close()

    threads = [threading.Thread(target=build, args=(s,)) for s in SECRETS[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for secret in SECRETS[:2]:
        record = records[secret]
        assert record.status.value == "succeeded", record.notes
        assert targets(record.blocked_actions) == {("sensitive_read", secret)}
        assert any("0 dropped by gVisor, 0 undecodable" in n for n in record.notes)

"""TraceSink against real runsc: events arrive decoded, and runsc fails closed.

Uses ``runsc do`` (no Docker needed): it runs a command in a fresh sandbox whose
root is the host's, read-only with a tmpfs overlay, here with no network. Every
runsc process a test starts is found by its private ``--root`` state directory and
must be gone when the test ends.
"""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.backends.hostprocs import kill_pids, sandbox_pids
from farm.observe import DEFAULT_POINTS, SockAddr, TraceSink, pod_init_config
from tests.recorder import Recorder

RUNSC = shutil.which("runsc") or "/usr/bin/runsc"

# Harmless: a refused loopback connect, an open of a root-only file (closed unread),
# and a distinctive exit status.
PROBE = """
import socket
s = socket.socket()
try:
    s.connect(("127.0.0.1", 9))
except OSError:
    pass
open("/etc/shadow").close()
raise SystemExit(7)
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="farm-obs-") as d:
        yield Path(d)


@pytest.fixture
def state(workdir: Path) -> Iterator[Path]:
    """runsc's --root for this test; afterwards no runsc process may still use it."""
    root = workdir / "state"
    yield root
    left = sandbox_pids(str(root))
    kill_pids(left)  # by PID, only ours, then fail: a leak is a bug
    assert not left, f"runsc processes left behind: {left}"


def runsc_do(
    state: Path, config: dict, code: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    fd, name = tempfile.mkstemp(prefix="init-", suffix=".json", dir=state.parent)
    with open(fd, "w") as f:
        json.dump(config, f)
    argv = [
        RUNSC,
        f"--root={state}",
        "--network=none",
        f"--pod-init-config={name}",
        "do",
        "--cwd=/",
        sys.executable,
        "-I",  # isolated: no user site, no env-driven imports
        "-c",
        code,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def test_sink_receives_decoded_events(workdir: Path, state: Path) -> None:
    rec = Recorder()
    with TraceSink(workdir / "t.sock", rec) as sink:
        done = runsc_do(state, pod_init_config(sink.path, DEFAULT_POINTS), PROBE)
        assert done.returncode == 7, done.stderr
        assert sink.wait_idle(30), "runsc never hung up the trace connection"
        stats = sink.stats()

    (start,) = rec.of("container_start")
    container = start.fields["id"]
    assert start.fields["args"][-1] == PROBE
    assert {e.container_id for e in rec.events} == {container}

    (connect,) = rec.of("connect")
    assert connect.sockaddr() == SockAddr("inet", "127.0.0.1", 9)
    assert connect.errno == errno.ECONNREFUSED  # loopback only: --network=none
    assert connect.context.process_name.startswith("python")

    (sock,) = [e for e in rec.of("socket") if e.fields.get("domain") == socket.AF_INET]
    assert sock.context.thread_group_id == connect.context.thread_group_id

    shadow = [e for e in rec.of("open") if e.fields.get("pathname") == "/etc/shadow"]
    assert len(shadow) == 1
    assert shadow[0].fields["exit"].get("result", 0) >= 0

    leader = [e for e in rec.of("task_exit") if e.context.thread_id == 1]
    assert [e.fields.get("exit_status") for e in leader] == [7 << 8]  # a wait status
    assert rec.events[0].kind == "container_start"
    assert rec.events[-1] == leader[0]  # the init process's exit is the last event

    assert stats.connections == 1
    assert stats.events == len(rec.events)
    assert (stats.dropped, stats.unparseable, stats.handshake_failures) == (0, 0, 0)


def test_raw_syscall_points_carry_context(workdir: Path, state: Path) -> None:
    code = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    code += "s.sendto(b'x', ('127.0.0.1', 53))"
    rec = Recorder()
    with TraceSink(workdir / "t.sock", rec) as sink:
        done = runsc_do(state, pod_init_config(sink.path), code)
        assert done.returncode == 0, done.stderr
        assert sink.wait_idle(30)
    sendto = [e for e in rec.of("syscall") if e.syscall_name == "sendto"]
    assert len(sendto) == 2  # enter, then exit with the result
    assert "exit" not in sendto[0].fields
    assert sendto[1].fields["exit"] == {"result": 1}
    assert all(e.context.thread_group_id > 0 for e in sendto)


def test_one_sink_serves_concurrent_sandboxes(workdir: Path, state: Path) -> None:
    rec = Recorder()
    with TraceSink(workdir / "t.sock", rec) as sink:
        config = pod_init_config(sink.path)
        results: list[int] = []
        runs = [
            threading.Thread(target=lambda: results.append(runsc_do(state, config, "0").returncode))
            for _ in range(2)
        ]
        for t in runs:
            t.start()
        for t in runs:
            t.join(180)
        assert results == [0, 0]
        assert sink.wait_idle(30)
        assert sink.stats().connections == 2
    starts = rec.of("container_start")
    assert len({e.container_id for e in starts}) == 2
    assert len({e.connection for e in starts}) == 2


def test_runsc_fails_closed_without_a_sink(workdir: Path, state: Path) -> None:
    config = pod_init_config(workdir / "nobody-listens.sock")
    done = runsc_do(state, config, "print('RAN')")
    assert done.returncode != 0
    assert "RAN" not in done.stdout
    assert "nobody-listens.sock" in done.stderr


def test_runsc_fails_closed_when_the_sink_refuses_the_handshake(workdir: Path, state: Path) -> None:
    path = workdir / "rude.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(str(path))
        server.listen(1)

        def hang_up() -> None:
            conn, _ = server.accept()
            conn.close()  # no Handshake back

        rude = threading.Thread(target=hang_up, daemon=True)
        rude.start()
        done = runsc_do(state, pod_init_config(path), "print('RAN')")
        rude.join(5)
    assert done.returncode != 0
    assert "RAN" not in done.stdout
    assert "handshake" in done.stderr


@pytest.mark.parametrize("via", ["flag", "annotation"])
def test_oci_container_id_and_per_container_config(workdir: Path, state: Path, via: str) -> None:
    """What a Docker backend relies on: with ``runsc run`` on an OCI bundle (as
    containerd does), events carry the OCI container id, and the config can come
    per container from an annotation when the runtime allows flag overrides."""
    rec = Recorder()
    with TraceSink(workdir / "t.sock", rec) as sink:
        config = workdir / "init.json"
        config.write_text(json.dumps(pod_init_config(sink.path)))
        spec: dict = {
            "ociVersion": "1.0.0",
            "root": {"path": "/", "readonly": True},
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]},
        }
        flags = [f"--root={state}", "--network=none"]
        if via == "flag":
            flags.append(f"--pod-init-config={config}")
        else:
            flags.append("--allow-flag-override")
            spec["annotations"] = {"dev.gvisor.flag.pod-init-config": str(config)}
        bundle = workdir / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        argv = [RUNSC, *flags, "run", f"--bundle={bundle}", f"farm-obs-{via}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert sink.wait_idle(30)
    assert {e.container_id for e in rec.events} == {f"farm-obs-{via}"}
    assert rec.events[0].kind == "container_start"
    assert rec.events[-1].kind == "task_exit"

"""diffoscope parses hostile artifacts, so it runs confined: as nobody, with no network and
an address-space limit. The wrapper (``farm.diffoscope.confined``) is checked from the host
side through /proc around a small probe, and the real diffoscope runs under it."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import diffoscope

#: Reports who it is, waits for the test to look at it in /proc, then tries the network
#: (a listener the test owns on loopback) and to allocate past and below its limit.
PROBE = r"""
import os, socket, sys
print(os.getpid(), flush=True)
sys.stdin.readline()
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    try:
        socket.create_connection((host, int(sys.argv[1])), timeout=5).close()
        print("connected", flush=True)
    except OSError as exc:
        print("no network", exc.errno, flush=True)
for size in sys.argv[2:]:
    try:
        block = bytearray(int(size))
        print("allocated", size, flush=True)
        del block
    except MemoryError:
        print("memory limit", size, flush=True)
"""
LIMIT = 256 << 20


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_the_wrapper_drops_to_nobody_without_network_under_a_memory_limit(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    argv = ["/usr/bin/python3", "-I", "-c", PROBE, str(port), str(1 << 30), str(16 << 20)]
    probe = subprocess.Popen(
        diffoscope.confined(argv, memory=LIMIT),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        pid = int(probe.stdout.readline())
        assert pid == probe.pid  # each wrapper execs: no process is left as root
        seen = status(pid)
        assert seen["Uid"].split() == ["65534"] * 4 and seen["Gid"].split() == ["65534"] * 4
        assert seen["Groups"] == "" and seen["NoNewPrivs"] == "1"
        assert int(seen["CapEff"], 16) == 0 and int(seen["CapPrm"], 16) == 0
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert f"Max address space         {LIMIT}" in limits
        out, _ = probe.communicate("go\n")
    finally:
        with contextlib.suppress(ProcessLookupError):
            probe.kill()
        probe.wait()
    lines = out.splitlines()
    # The new namespace's loopback is down: IPv4 is unreachable, ::1 is not even assigned.
    assert lines[:2] == [f"no network {errno.ENETUNREACH}", f"no network {errno.EADDRNOTAVAIL}"]
    assert lines[2:] == [f"memory limit {1 << 30}", f"allocated {16 << 20}"]
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing reached the host's loopback


def test_real_diffoscope_runs_confined_and_explains_a_difference(tmp_path: Path) -> None:
    left, right = tmp_path / "left", tmp_path / "right"
    left.write_text("hello\nworld\n")
    right.write_text("hello\nthere\n")
    tmp_path.chmod(0o700)  # the originals stay private: diffoscope reads its own copies
    report = diffoscope.compare(("run0", {"out/x": left}), ("run1", {"out/x": right})).decode()
    assert "diffoscope failed" not in report, report
    assert "-world" in report and "+there" in report, report
    assert "run0/out/x" in report

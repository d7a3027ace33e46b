"""pid 1's child (farm.sinkhole.init_argv) waits for the resolver by a pipe, not a sleep
loop (issue 14: start plus teardown): the same shell text run on the host, with the real
resolver script on an ephemeral 127.0.0.1 port, as the tests' own user (UID 0)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm import sinkhole

pytestmark = pytest.mark.skipif(not shutil.which("perl"), reason="the resolver needs perl")


def init(logs: Path, build: str, perl: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = sinkhole.init_argv(
        perl=perl or shutil.which("perl") or "perl",
        script=str(sinkhole.script_path()),
        port=0,
        log_dir=str(logs),
        uid=0,
    )
    return subprocess.run([*argv, "sh", "-c", build], capture_output=True, text=True, timeout=60)


def gone(pid: int) -> bool:
    """Dead (or a zombie), once SIGKILL has landed: the resolver is no child of the
    shell that killed it (it ran in the command substitution), so nobody waited for it."""
    for _ in range(1000):  # a hang guard only: SIGKILL lands in microseconds
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.01)
    return False


def test_the_build_starts_once_the_resolver_is_ready_and_it_is_killed_after(
    tmp_path: Path,
) -> None:
    done = init(tmp_path, f"cat {tmp_path}/ready; exit 7")
    assert done.returncode == 7, done.stderr
    pid, port = map(int, done.stdout.split())
    assert port > 0 and (tmp_path / "ready").read_text().split() == [str(pid), str(port)]
    assert gone(pid), "the resolver outlived the build"


def test_without_perl_the_build_still_runs(tmp_path: Path) -> None:
    done = init(tmp_path, "echo built", perl=str(tmp_path / "no-perl"))
    assert done.returncode == 0 and done.stdout == "built\n", done.stderr
    assert not (tmp_path / "ready").exists()


def test_a_resolver_that_cannot_start_does_not_hold_the_build(tmp_path: Path) -> None:
    logs = tmp_path / "not-a-directory"
    logs.write_text("")
    done = init(logs, "echo built")
    assert done.returncode == 0 and done.stdout == "built\n", done.stderr


def test_the_wait_is_not_a_sleep_loop() -> None:
    text = sinkhole.init_argv()[2]
    assert "sleep" not in text and "while" not in text
    assert os.path.basename(sinkhole.init_argv()[0]) == "sh"


def test_a_late_resolver_lets_the_build_start_and_still_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past READY_SECONDS the build starts, but the resolver is not killed: it binds
    late, writes ``ready`` marked late, logs the names asked, and dies with the build."""
    monkeypatch.setattr(sinkhole, "READY_SECONDS", 1)
    # A perl whose bind takes 3 s (the script's alarm is armed by then): a loaded host.
    wrapper = tmp_path / "slow-perl"
    slow_bind = (
        "BEGIN { *CORE::GLOBAL::bind = sub { my $t = Time::HiRes::time() + 3; "
        "select(undef, undef, undef, 0.05) while Time::HiRes::time() < $t; "
        "CORE::bind($_[0], $_[1]) } } $0 = shift; do $0; die $@ if $@;"
    )
    perl = shutil.which("perl")
    wrapper.write_text(f"#!/bin/sh\nexec {perl} -MTime::HiRes -e '{slow_bind}' \"$@\"\n")
    wrapper.chmod(0o755)
    logs = tmp_path / "dns"
    logs.mkdir()
    ask = (
        "import socket, struct, sys, time\n"
        f"ready = {str(logs / 'ready')!r}\n"
        "for _ in range(3000):  # a hang guard only\n"
        "    try:\n"
        "        pid, port, *rest = open(ready).read().split()\n"
        "        break\n"
        "    except (OSError, ValueError):\n"
        "        time.sleep(0.01)\n"
        "q = struct.pack('>HHHHHH', 1, 0x100, 1, 0, 0, 0)\n"
        "q += b'\\x04late\\x07example\\x00\\x00\\x01\\x00\\x01'\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
        "s.sendto(q, ('127.0.0.1', int(port))); s.recv(512)\n"
        "print(pid, rest)\n"
    )
    (tmp_path / "ask.py").write_text(ask)
    done = init(logs, f"{sys.executable} {tmp_path}/ask.py", perl=str(wrapper))
    assert done.returncode == 0, done.stderr
    pid, rest = done.stdout.split(maxsplit=1)
    assert rest.strip() == "['late']"
    resolved = sinkhole.read_log(logs)
    assert resolved == sinkhole.Resolved(int(pid), {1: "late.example"}, late=True)
    assert gone(int(pid)), "the resolver outlived the build"

"""Find and stop the host processes that belong to one sandbox, by PID only.

Callers: ``farm.backends.local`` during teardown. A runsc container whose start failed
can leave ``runsc-sandbox``, ``runsc-gofer`` and its ``containerd-shim`` running while
Docker shows nothing, so teardown checks the processes themselves. Only processes whose
command line names the sandbox's own container id are ever touched.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

#: Executables that run on the host on behalf of one sandbox.
_SANDBOX_PROGRAMS = (b"runsc", b"containerd-shim")


def sandbox_pids(container_id: str, proc: Path = Path("/proc")) -> list[int]:
    """PIDs of runsc and shim processes whose arguments mention ``container_id``."""
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited while we looked
        program = argv[0] if argv else b""
        named = any(container_id.encode() in a for a in argv)
        if named and any(p in program for p in _SANDBOX_PROGRAMS):
            pids.append(int(entry.name))
    return pids


def kill_pids(pids: list[int], wait_seconds: float = 5.0) -> list[int]:
    """SIGKILL each PID and wait for it to go. Returns the PIDs that were signalled."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_seconds
    while killed and time.monotonic() < deadline and any(_alive(p) for p in killed):
        time.sleep(0.05)
    return killed


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"

"""Read a tree's SOURCE_DATE_EPOCH in a fresh interpreter and report its peak RSS, for
the git reader's memory tests (tests/unit/test_gitread_*_memory.py): a fresh process,
so the peak is the reader's and not the test runner's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, and
#: subprocess forks (vfork) from the test runner, so ru_maxrss starts at the runner's own
#: size (737 MiB late in a full run); VmHWM belongs to the new process image alone.
PROBE = """
import json, sys
from pathlib import Path
from farm.epoch import read_epoch
epoch = read_epoch(Path(sys.argv[1]))
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")]
peak = int(hwm[0].split()[1])
print(json.dumps({"value": epoch.value, "note": epoch.note, "peak": peak}))
"""


def probe_epoch(repo: Path) -> dict:
    """``{"value", "note", "peak"}``: the epoch read, its note, and peak RSS in KiB."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(repo)], cwd=ROOT, capture_output=True, check=True
    )
    return json.loads(out.stdout)

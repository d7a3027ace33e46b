"""The cost of resources.disk: builds on the capped filesystem versus plain directories.

    python bench/disk.py [--runs 5] [--write-mib 128] [--hello-serde]

Each round runs every workload once with the cap (farm's runner: a sparse ext4 image,
loop-mounted, farm.workdisk) and once without it (the same runner with target/ and out/
as plain directories on the host filesystem, as before resources.disk), interleaved,
so drift on the machine hits both alike. Workloads: a trivial build (`true`: the fixed
cost of mkfs, mount, umount and detach), a synthetic write-heavy build (big files and
many small ones into target/ and /out, then read back), and with ``--hello-serde`` the
example's release build. The sandbox is runsc without observation on both sides.
Prints the median per side and its ratio to the uncapped baseline, as Markdown: wall
time of the whole build, and time to the record (before the unmount and removal).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from farm.backends.local import LocalBackend
from farm.policy import BuildDirs
from farm.records import Status
from farm.runner import Runner
from farm.settings import SANDBOX_UID, Settings
from farm.spec import build_spec
from farm.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-serde"


class UncappedRunner(Runner):
    """The baseline: target/ and out/ as plain host directories (no filesystem image)."""

    def _make_dirs(self, dirs: BuildDirs, disk: int) -> None:
        dirs.root.mkdir(parents=True, mode=0o700)
        dirs.disk.mkdir(mode=0o700)
        for writable in (dirs.target, dirs.out):
            writable.mkdir(mode=0o755)
            os.chown(writable, SANDBOX_UID, SANDBOX_UID)


def write_heavy(mib: int) -> list[str]:
    """Half the bytes as 16 MiB files, half as 4 KiB files, then read everything back."""
    big, small = max(1, mib // 32), mib * 128
    script = (
        f"for i in $(seq {big}); do head -c 16m /dev/urandom > /build/target/big$i; done; "
        f"mkdir /out/many && cd /out/many && head -c {small * 4096} /dev/urandom "
        f"| split -b 4096 -a 6 - f && cat /build/target/* /out/many/* | wc -c > /out/sum"
    )
    return ["sh", "-c", script]


def timed(runner: Runner, spec: dict) -> tuple[float, float]:
    """Wall time of ``Runner.build`` (up to the work dir's removal) and the record's
    duration (snapshot, sandbox, collection: before the unmount and the removal)."""
    start = time.monotonic()
    record = runner.build(build_spec(spec))
    elapsed = time.monotonic() - start
    if record.status is not Status.SUCCEEDED or record.duration_seconds is None:
        raise SystemExit(f"build {record.id} {record.status.value}: {record.notes}")
    return elapsed, record.duration_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write-mib", type=int, default=128)
    parser.add_argument("--hello-serde", action="store_true", help="also the example build")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="farm-bench-disk-") as tmp:
        home = Path(tmp) / "home"
        project = Path(tmp) / "proj"
        project.mkdir()
        (project / "input.txt").write_text("data\n")
        settings = Settings(home=home, observe=False)
        backend, store = LocalBackend(settings), Store(home)
        sides = {"capped": Runner, "uncapped": UncappedRunner}
        runners = {name: cls(settings, backend, store) for name, cls in sides.items()}
        workloads = {
            "trivial build (`true`)": {"source": str(project), "argv": ["true"]},
            f"write-heavy ({args.write_mib} MiB)": {
                "source": str(project),
                "argv": write_heavy(args.write_mib),
                "resources": {"disk": f"{args.write_mib * 2}m"},
                "outputs": ["out/sum"],
            },
        }
        if args.hello_serde:
            workloads["hello-serde release build"] = {"source": str(EXAMPLE)}
        times: dict[str, dict[str, list[tuple[float, float]]]] = {
            w: {s: [] for s in sides} for w in workloads
        }
        timed(runners["uncapped"], workloads["trivial build (`true`)"])  # warm up dockerd
        for i in range(args.runs):
            for work, spec in workloads.items():
                # Alternate which side goes first, so neither always follows the other.
                order = list(runners.items())[:: 1 if i % 2 == 0 else -1]
                for side, runner in order:
                    wall, recorded = timed(runner, spec)
                    times[work][side].append((wall, recorded))
                    said = f"{wall:.2f}s ({recorded:.2f}s to the record)"
                    print(f"  round {i + 1}: {work} {side}: {said}", file=sys.stderr)
        print(table(times))
    return 0


def table(times: dict[str, dict[str, list[tuple[float, float]]]]) -> str:
    rows = [
        "| workload | side | runs, wall (s) | median wall (s) | ratio "
        "| median to the record (s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for work, sides in times.items():
        base = [statistics.median(t[i] for t in sides["uncapped"]) for i in (0, 1)]
        for side in ("uncapped", "capped"):
            wall, recorded = (statistics.median(t[i] for t in sides[side]) for i in (0, 1))
            runs = ", ".join(f"{t[0]:.2f}" for t in sides[side])
            rows.append(
                f"| {work} | {side} | {runs} | {wall:.2f} | {wall / base[0]:.2f} "
                f"| {recorded:.2f} | {recorded / base[1]:.2f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())

"""Cold-build levers of runsc, each measured interleaved against runc in one run.

    python bench/levers.py [--runs 5] [--variants a,b] [--out FILE]

Each round builds examples/hello-serde cold once per variant, in turn, straight under
the runtime (bench/oci.py: the same bundle for every variant, no dockerd runtime added):

- runc: the baseline;
- ptrace: farm's runtime flags (`--network=none --platform=ptrace`, farm/host.py);
- systrap: gVisor's default platform instead of ptrace;
- dcache: ptrace plus `--dcache=10000` (one global dentry cache);
- exclusive: ptrace plus `--file-access-mounts=exclusive` (/src and target/ cached as
  if only the sandbox changes them);
- overlay-none: ptrace plus `--overlay2=none` (runsc's default wraps the root in an
  overlay whose upper layer is a file store; farm's root is read-only anyway);
- sid: systrap with another runsc binary (`--runsc-sid PATH`), e.g. Debian unstable's
  build of the same upstream snapshot with a newer Go (`apt-get download runsc` from
  sid, then `dpkg -x`; that build panics on ptrace here: "ptrace set regs failed");
  left out when no path is given;
- thp: ptrace, with the host's /sys/kernel/mm/transparent_hugepage/shmem_enabled set to
  `advise` for that run only (runsc then lets the application's memory use huge pages).
  The setting is read first and written back right after the run, also on failure; the
  JSON records both values;
- systrap-thp: both.

The JSON (rewritten after every round, so a cut run keeps its rounds) holds every run
with /proc/loadavg before and after it. Printed: median, min-max spread and the median
ratio to runc per variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import oci

THP = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")


def thp_setting() -> str:
    """The selected value, e.g. `never` out of `always within_size advise [never] deny force`."""
    return THP.read_text().split("[", 1)[1].split("]", 1)[0]


def with_thp(build: Callable[[], oci.Run]) -> Callable[[], oci.Run]:
    def measured() -> oci.Run:
        before = thp_setting()
        THP.write_text("advise")
        try:
            run = build()
        finally:
            THP.write_text(before)
        run.extra = {"shmem_enabled": "advise", "restored": thp_setting()}
        if run.extra["restored"] != before:
            raise SystemExit(f"{THP} is {run.extra['restored']}, was {before}: restore it")
        return run

    return measured


def variants(
    argv: list[str] | None, expect: str | None, sid: str | None
) -> dict[str, Callable[[], oci.Run]]:
    def go(name: str, command: list[str]) -> Callable[[], oci.Run]:
        return lambda: oci.run(name, command, argv, expect)

    chosen = {
        "runc": go("runc", oci.runc()),
        "ptrace": go("ptrace", oci.runsc()),
        "systrap": go("systrap", oci.runsc("--platform=systrap")),
        "dcache": go("dcache", oci.runsc("--dcache=10000")),
        "exclusive": go("exclusive", oci.runsc("--file-access-mounts=exclusive")),
        "overlay-none": go("overlay-none", oci.runsc("--overlay2=none")),
        "thp": with_thp(go("thp", oci.runsc())),
        "systrap-thp": with_thp(go("systrap-thp", oci.runsc("--platform=systrap"))),
    }
    if sid:
        chosen["sid"] = go("sid", oci.runsc("--platform=systrap", binary=sid))
    return chosen


def paired(runs: dict[str, list[dict]], name: str, against: str) -> tuple[float, int, int]:
    """The median of per-round ratios NAME/AGAINST, and in how many rounds NAME was faster:
    the rounds drift with the machine's load, so a round is compared only with itself."""
    pairs = list(zip(runs[name], runs[against], strict=False))
    ratios = [a["seconds"] / b["seconds"] for a, b in pairs]
    wins = sum(1 for r in ratios if r < 1)
    return statistics.median(ratios), wins, len(ratios)


def summary(runs: dict[str, list[dict]]) -> str:
    rows = [
        "| variant | runs (s) | median (s) | spread (s) | ratio to runc, per round (median) "
        "| ratio to ptrace, per round (median) | faster than ptrace |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        ts = [r["seconds"] for r in rs]
        med = statistics.median(ts)
        cells = f"{', '.join(f'{t:.1f}' for t in ts)} | {med:.1f} | {min(ts):.1f}-{max(ts):.1f}"
        to_runc = f"{paired(runs, name, 'runc')[0]:.2f}"
        to_ptrace, wins = "", ""
        if "ptrace" in runs and name not in ("runc", "ptrace"):
            ratio, won, n = paired(runs, name, "ptrace")
            to_ptrace, wins = f"{ratio:.2f}", f"{won}/{n}"
        rows.append(f"| {name} | {cells} | {to_runc} | {to_ptrace} | {wins} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variants", default="ptrace,systrap,dcache,exclusive,thp")
    parser.add_argument("--runsc-sid", help="another runsc binary, measured as variant `sid`")
    parser.add_argument(
        "--package",
        help="build only this crate of hello-serde's graph (`cargo build -p`), a shorter "
        "workload for a loaded machine; default: the whole release build",
    )
    parser.add_argument(
        "--out", type=Path, default=oci.ROOT / "docs" / "performance-data" / "levers.json"
    )
    parser.add_argument("--summarise", type=Path, help="print the table of a saved run")
    args = parser.parse_args()
    if args.summarise:
        print(summary(json.loads(args.summarise.read_text())["runs"]))
        return 0
    # A SIGTERM mid-run still runs with_thp's `finally`, so the host setting is restored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{sys.argv[0]}: terminated"))
    argv = [*oci.ARGV, "-p", args.package] if args.package else None
    # The crate's rlib must be there, or a variant that built nothing would win.
    expect = f"release/deps/lib{args.package.replace('-', '_')}-*.rlib" if args.package else None
    chosen = variants(argv, expect, args.runsc_sid)
    names = ["runc"] + [v for v in args.variants.split(",") if v != "runc"]
    unknown = [v for v in names if v not in chosen]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(chosen)}")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i in range(args.runs):
        # Rotate the order each round so no variant always follows the same neighbour.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            run = chosen[name]()
            runs[name].append(dataclasses.asdict(run))
            said = f"round {i + 1}: {name:<10} {run.seconds:7.1f}s  load {run.loadavg_before}"
            print(said, flush=True)
            head = {"thp_host": thp_setting(), "argv": argv or oci.ARGV}
            args.out.write_text(json.dumps({**head, "runs": runs}, indent=1))
    print(summary(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

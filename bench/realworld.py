"""Cold build times of the realworld corpus: gVisor next to runc (docs/performance.md);
with ``--warm``, the rebuild after a one-line change (bench/warmcorpus.py).

    python bench/realworld.py [PROGRAM …] [--out FILE]
    python bench/realworld.py --warm [--rounds N] [--no-lto] [PROGRAM …] [--out FILE]

``--warm``: per program, runc with a warm target directory against ``farm build
--layer`` (the layer made once, not timed) and farm's cold build, in interleaved rounds;
``--no-lto`` builds every side with cargo's default release profile (no LTO, 16 codegen
units) instead of the program's own. Printed as Markdown, saved as JSON (default
warm-rebuilds.json) with the load average and the compiled crates of every run.

For each program of tests/realworld/programs.py (default: all, smallest first): fill a
loopback mirror with its Debian-derived crates, resolve its lock against it in a sandbox,
serve it on 127.0.0.1, then time `farm build --registry` in a fresh FARM_HOME (so the
crate cache and the build are cold) under gVisor (runsc, observed, farm's default) and
under runc (`--insecure-runtime=runc`), one after the other. Printed as Markdown, saved as
JSON. Mirror filling and resolution are setup, not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.fetch.resolve import resolve_lock  # noqa: E402
from farm.mirror import serve as mirror_serve  # noqa: E402
from farm.settings import Settings  # noqa: E402
from tests.realworld.programs import CORPUS, Program, fill_mirror, program_source  # noqa: E402

RUNTIMES = {"gVisor (runsc)": [], "runc": ["--insecure-runtime=runc"]}


def loadavg() -> str:
    """The machine's load when a run starts and ends: the figures are only as good as it."""
    return Path("/proc/loadavg").read_text().strip()


def cold_build(src: Path, program: Program, index_url: str, flags: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="farm-rw-home-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env["FARM_HOME"] = home
        output = f"target/release/{program.binary}"
        argv = [sys.executable, "-m", "farm.cli", "build", str(src), "--json", "--no-cache"]
        argv += ["--registry", index_url, "--image", program.image, "--output", output, *flags]
        load_before = loadavg()
        began = time.monotonic()
        done = subprocess.run([*argv, "--", *program.argv], capture_output=True, text=True, env=env)
        wall = time.monotonic() - began
        load_after = loadavg()
    if done.returncode != 0:
        said = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise SystemExit(f"{program.id} {flags}: exit {done.returncode}\n{said}")
    record = json.loads(done.stdout)
    return {
        "wall": round(wall, 1),
        "build": record["duration_seconds"],
        "sha256": record["artifacts"][0]["sha256"],
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }


def measure(program: Program, work: Path) -> dict:
    mirror, crates = fill_mirror(program, work / "mirror")
    src = program_source(program, mirror, work / "src")
    settings = Settings.from_env({"FARM_HOME": str(work / "home")})
    resolved = resolve_lock(src, mirror.path, settings=settings, image=program.image)
    (src / "Cargo.lock").write_text(resolved.text)
    server = mirror_serve.MirrorServer(mirror, "127.0.0.1", 0).start()
    try:
        runs = {
            name: cold_build(src, program, server.index_url, flags)
            for name, flags in RUNTIMES.items()
        }
    finally:
        server.shutdown()
        server.server_close()
    locked = sum(1 for p in resolved.lockfile.packages if p.is_registry)
    return {"program": program.id, "crates": locked, "mirror": len(crates), **runs}


def table(rows: list[dict]) -> str:
    lines = [
        "| program | locked crates | gVisor (runsc) cold build | runc cold build | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        g, c = r["gVisor (runsc)"]["build"], r["runc"]["build"]
        lines.append(f"| {r['program']} | {r['crates']} | {g:.0f} s | {c:.0f} s | {g / c:.2f} |")
    return "\n".join(lines)


def warm_table(rows: list[dict]) -> str:
    """One row per program and variant: runs, median, the two ratios, load, crates compiled."""
    lines = [
        "| program | variant | runs (s) | median (s) | to runc warm | farm cold / this "
        "| load (1 min, before) | crates compiled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        medians = {n: statistics.median(x["wall"] for x in runs) for n, runs in r["runs"].items()}
        base, cold = medians["runc-warm"], medians["farm-cold"]
        label = r["program"] + (" (no LTO)" if r["env"] else "")
        for name, runs in r["runs"].items():
            listed = ", ".join(f"{x['wall']:.1f}" for x in runs)
            ones = [float(x["loadavg_before"].split()[0]) for x in runs]
            counts = sorted({len(x["compiled"]) for x in runs})
            med = medians[name]
            lines.append(
                f"| {label} | {name} | {listed} | {med:.1f} | {med / base:.2f}x "
                f"| {cold / med:.2f}x | {min(ones):.1f}-{max(ones):.1f} "
                f"| {'/'.join(map(str, counts))} |"
            )
    return "\n".join(lines)


def warm(chosen: list[Program], rounds: int, no_lto: bool, out: Path) -> None:
    from bench.warmcorpus import measure_warm

    rows = []
    for program in chosen:
        with tempfile.TemporaryDirectory(prefix="farm-rw-warm-") as work:
            rows.append(measure_warm(program, Path(work), rounds, no_lto))
        print(warm_table(rows[-1:]), flush=True)
        out.write_text(json.dumps(rows, indent=1))
    print(warm_table(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "programs",
        nargs="*",
        help="names (every suite's build of it) or ids such as hexyl-0.8.0-trixie "
        "(default: the whole corpus)",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--warm", action="store_true", help="the one-line-change rebuild, warm")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (--warm)")
    p.add_argument("--no-lto", action="store_true", help="cargo's default release profile")
    args = p.parse_args()
    wanted = set(args.programs)
    chosen = [x for x in CORPUS if not wanted or {x.name, x.id} & wanted]
    if args.warm:
        warm(chosen, args.rounds, args.no_lto, args.out or Path("warm-rebuilds.json"))
        return
    args.out = args.out or Path("realworld-times.json")
    rows = []
    for program in chosen:
        with tempfile.TemporaryDirectory(prefix="farm-rw-") as work:
            rows.append(measure(program, Path(work)))
        print(table(rows[-1:]), flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()

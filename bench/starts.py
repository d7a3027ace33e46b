"""Sandbox start plus teardown, and a cache hit as a whole `farm build` CLI process.

    python bench/starts.py [--starts 20] [--hits 10] [--out FILE]

Start plus teardown: a trivial build (`true`) through farm's own Runner (snapshot,
create, start, collect, teardown), STARTS times per runtime, the runtimes interleaved
(runc, runsc, runsc-observed: farm's default when observing). Cache hit: in a fresh
FARM_HOME, one cold `farm build examples/hello-serde` CLI process, then HITS more,
each served from the verified cache and timed as the whole process (Python start,
imports, key, lookup, re-hash of the artifact). Reports p50, min and max; every run
carries /proc/loadavg before and after it in the JSON.
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

import docker

from farm.backends.local import LocalBackend
from farm.errors import InfrastructureError
from farm.records import Status
from farm.runner import Runner
from farm.settings import Settings
from farm.spec import build_spec
from farm.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-serde"
RUNTIMES = ["runc", "runsc", "runsc-observed"]


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def timed(fn) -> dict:
    before = loadavg()
    began = time.monotonic()
    fn()
    seconds = time.monotonic() - began
    return {"seconds": round(seconds, 3), "loadavg_before": before, "loadavg_after": loadavg()}


def retried(fn, failures: list[str], limit: int = 3) -> dict:
    """A run again after a transient teardown failure (a loop device that the kernel had
    not yet auto-cleared on a loaded machine); every failure is kept in the JSON."""
    while True:
        try:
            return timed(fn)
        except InfrastructureError as exc:
            failures.append(str(exc))
            if len(failures) >= limit:
                raise


def trivial_build(home: Path, runtime: str, source: Path) -> None:
    settings = Settings(
        home=home,
        runtime=runtime.removesuffix("-observed"),
        observe=runtime.endswith("-observed"),
    )
    runner = Runner(settings, LocalBackend(settings), Store(home))
    record = runner.build(build_spec({"source": str(source), "argv": ["true"]}))
    if record.status is not Status.SUCCEEDED:
        raise SystemExit(f"{runtime}: build {record.id} {record.status.value}: {record.notes}")


#: A build whose one artifact is as large as hello-serde's binary (6.7 MB), for a cache
#: hit on a machine too loaded for a cold cargo build: a hit re-hashes the artifact and
#: starts no sandbox, so only the artifact's size matters to its time.
SMALL_ARGV = ["--output", "out/app", "--", "sh", "-c", "head -c 6700000 /dev/zero > /out/app"]


def cli_build(home: Path, source: Path, extra: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(home)
    argv = [sys.executable, "-m", "farm.cli", "build", str(source), "--json", *extra]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"farm build: exit {done.returncode}\n{done.stderr[-3000:]}")


def stats(runs: list[dict]) -> dict:
    ts = [r["seconds"] for r in runs]
    return {"p50": statistics.median(ts), "min": min(ts), "max": max(ts), "n": len(ts)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--hits", type=int, default=10)
    parser.add_argument(
        "--hit-source",
        choices=["hello-serde", "small"],
        default="hello-serde",
        help="what the cache hit serves: the example's release build, or a 6.7 MB artifact "
        "made by `head` (same hit path, no cold cargo build first)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "performance-data" / "starts.json"
    )
    args = parser.parse_args()
    configured = docker.from_env().info()["Runtimes"]
    runtimes = [r for r in RUNTIMES if r.removesuffix("-observed") in configured]
    starts: dict[str, list[dict]] = {r: [] for r in runtimes}
    with tempfile.TemporaryDirectory(prefix="farm-bench-starts-") as tmp:
        home, trivial = Path(tmp) / "home", Path(tmp) / "trivial"
        trivial.mkdir()
        (trivial / "README").write_text("trivial\n")
        failures: list[str] = []
        for i in range(args.starts):
            for rt in runtimes:
                starts[rt].append(retried(lambda rt=rt: trivial_build(home, rt, trivial), failures))
            print(
                f"start {i + 1}: "
                + ", ".join(f"{r} {starts[r][-1]['seconds']:.2f}s" for r in runtimes)
            )
        cli_home = Path(tmp) / "cli-home"
        if args.hit_source == "small":
            source, extra = trivial, SMALL_ARGV
        else:
            source, extra = EXAMPLE, []
        cold = timed(lambda: cli_build(cli_home, source, extra))
        print(f"cold CLI build {cold['seconds']:.1f}s", flush=True)
        hits = [timed(lambda: cli_build(cli_home, source, extra)) for _ in range(args.hits)]
    result = {
        "start_teardown": {rt: {"stats": stats(rs), "runs": rs} for rt, rs in starts.items()},
        "infrastructure_failures": failures,
        "hit_source": args.hit_source,
        "cold_cli_build": cold,
        "cache_hit_cli": {"stats": stats(hits), "runs": hits},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    base = result["start_teardown"]["runc"]["stats"]["p50"]
    print("| case | p50 (s) | min-max (s) | n | ratio to runc |\n|---|---|---|---|---|")
    cases = [(f"start + teardown, {rt}", r["stats"]) for rt, r in result["start_teardown"].items()]
    cases.append(("cache hit, `farm build` CLI process", result["cache_hit_cli"]["stats"]))
    for name, s in cases:
        ratio = f"{s['p50'] / base:.2f}" if name.startswith("start") else ""
        print(f"| {name} | {s['p50']:.2f} | {s['min']:.2f}-{s['max']:.2f} | {s['n']} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

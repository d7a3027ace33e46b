"""Benchmarks: sandboxed versus baseline, interleaved, as ratios within one run.

    python bench/run.py [--runs 3] [--variants runsc,runsc-ptrace] [--out FILE]

Each round builds examples/hello-serde (regex, serde with derive, serde_json from
Debian's crates; a locked, offline release build) once per runtime, in turn, so slow
drift on the machine hits every side alike. The baseline is the same image, policy,
mounts and limits under runc, so only the sandbox differs. A trivial build (`true`)
measures start plus teardown. Runtimes not configured in dockerd are skipped.
Results: the median per runtime and its ratio to runc, printed as Markdown and saved
as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

from farm.backends.local import LocalBackend
from farm.records import Status
from farm.runner import Runner
from farm.settings import Settings
from farm.spec import build_spec
from farm.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-serde"


def timed_build(home: Path, runtime: str, spec: dict) -> float:
    observe = runtime.endswith("-observed")  # gVisor's trace sent to farm's sink
    settings = Settings(home=home, runtime=runtime.removesuffix("-observed"), observe=observe)
    runner = Runner(settings, LocalBackend(settings), Store(home))  # the host observer daemon
    start = time.monotonic()
    record = runner.build(build_spec(spec))
    elapsed = time.monotonic() - start  # includes waiting for and classifying events
    if record.status is not Status.SUCCEEDED:
        raise SystemExit(f"{runtime}: build {record.id} {record.status.value}: {record.notes}")
    return elapsed


def measure(home: Path, runtimes: list[str], spec: dict, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {rt: [] for rt in runtimes}
    for i in range(runs):
        for rt in runtimes:
            times[rt].append(timed_build(home, rt, spec))
            print(f"  round {i + 1}: {rt:<14} {times[rt][-1]:7.2f}s", file=sys.stderr)
    return times


def table(title: str, times: dict[str, list[float]]) -> str:
    base = statistics.median(times["runc"])
    rows = [
        f"### {title}",
        "",
        "| runtime | runs (s) | median (s) | ratio to runc |",
        "|---|---|---|---|",
    ]
    for rt, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            f"| {rt} | {', '.join(f'{t:.1f}' for t in ts)} | {med:.2f} | {med / base:.2f} |"
        )
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default="runsc,runsc-observed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    configured = docker.from_env().info()["Runtimes"]
    runtimes = ["runc"] + [v for v in args.variants.split(",") if v in configured]
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
        home, trivial = Path(tmp) / "home", Path(tmp) / "trivial"
        trivial.mkdir()
        (trivial / "README").write_text("trivial\n")
        print(f"cargo release build of {EXAMPLE.name}, runtimes {runtimes}", file=sys.stderr)
        cargo = measure(home, runtimes, {"source": str(EXAMPLE)}, args.runs)
        print("trivial build: start + teardown", file=sys.stderr)
        tiny = measure(home, runtimes, {"source": str(trivial), "argv": ["true"]}, args.runs + 2)
    report = table("cargo release build (hello-serde)", cargo) + "\n"
    report += table("trivial build (`true`): start, snapshot, collect, teardown", tiny)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cargo": cargo, "trivial": tiny}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the verified cache and reproducibility checks on a real cargo build.

    python bench/repro.py [--out FILE]

In one fresh FARM_HOME, through farm's own ``run_build`` (the CLI's path): a cold build
of examples/hello-serde, a cache hit of the same build (in-process, and as a whole
``farm build`` CLI call), and ``--check 2`` (two varied sandboxes, with the cache
bypassed). Prints a Markdown table with ratios to the cold build; saves JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from farm.backends.local import LocalBackend
from farm.buildflow import run_build
from farm.runner import Runner
from farm.settings import Settings
from farm.spec import build_spec
from farm.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-serde"


def timed(label: str, fn) -> float:
    start = time.monotonic()
    outcome = fn()
    elapsed = time.monotonic() - start
    said = "; ".join(getattr(outcome, "said", []) or [])
    print(f"  {label:<28} {elapsed:8.3f}s  {said}", file=sys.stderr)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "repro.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
        home = Path(tmp) / "home"
        settings = Settings(home=home)
        runner = Runner(settings, LocalBackend(settings), Store(home))
        spec = build_spec({"source": str(EXAMPLE)})
        cli = [sys.executable, "-m", "farm.cli", "build", str(EXAMPLE)]
        env = {**os.environ, "FARM_HOME": str(home)}
        times = {
            "cold build": timed("cold build", lambda: run_build(runner, spec)),
            "cache hit (in-process)": timed("cache hit", lambda: run_build(runner, spec)),
            "cache hit (`farm build` CLI)": timed(
                "cache hit, CLI", lambda: subprocess.run(cli, env=env, capture_output=True)
            ),
            "`--check 2` (cache bypassed)": timed(
                "check 2", lambda: run_build(runner, spec, check_runs=2, use_cache=False)
            ),
        }
    cold = times["cold build"]
    rows = ["| case | time (s) | ratio to cold |", "|---|---|---|"]
    rows += [f"| {k} | {v:.3f} | {v / cold:.4f} |" for k, v in times.items()]
    print("\n".join(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(times, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

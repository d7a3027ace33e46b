"""Where a sandboxed cargo build's time goes: runsc's own CPU profile of a cold build.

    python bench/profile.py [--out DIR]       (make profile)

Runs one cold hello-serde release build straight under runsc (bench/oci.py: no dockerd
runtime is added) with farm's flags plus `--profile --profile-cpu=FILE`, which makes
the sandbox write a Go CPU profile of the Sentry for the whole container. `--profile`
loosens runsc's seccomp filter, so it exists only in this benchmark, never in farm's
runtimes. Then `go tool pprof -top` (Debian's golang-go) summarises it, flat and
cumulative. A runc build of the same bundle in the same run gives the baseline.
Writes DIR/cpu.pprof, DIR/top-flat.txt, DIR/top-cum.txt and DIR/profile.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import oci


def pprof(profile: Path, *flags: str) -> str:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("go not found: apt-get install golang-go (for `go tool pprof`)")
    argv = [go, "tool", "pprof", "-top", "-nodecount=45", *flags, "/usr/bin/runsc", str(profile)]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=oci.ROOT / "bench" / "results" / "profile")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = (args.out / "cpu.pprof").resolve()
    cpu.unlink(missing_ok=True)
    baseline = oci.run("runc", oci.runc())
    profiled = oci.run("runsc --profile", oci.runsc("--profile", f"--profile-cpu={cpu}"))
    (args.out / "top-flat.txt").write_text(pprof(cpu))
    (args.out / "top-cum.txt").write_text(pprof(cpu, "-cum"))
    runs = [dataclasses.asdict(r) for r in (baseline, profiled)]
    (args.out / "profile.json").write_text(json.dumps(runs, indent=1))
    print(json.dumps(runs, indent=1))
    print((args.out / "top-flat.txt").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

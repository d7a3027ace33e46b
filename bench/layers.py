"""Benchmark: the common rebuild with a dependency layer, against runc with a warm target.

    python bench/layers.py [--runs 5] [--no-lto] [--out FILE]

A copy of examples/hello-serde gets a one-line change to its own code (a string in
src/main.rs) before every timed build. Each round, in turn (so drift on the machine hits
every side alike):

- ``runc-warm``: the same image under runc, the same environment and mounts, and a
  target directory kept from the previous round: cargo recompiles only hello-serde.
  Container start and teardown are inside the time, as they are for farm.
- ``farm-layer``: ``farm build --layer`` in gVisor, observed, starting from the
  project's dependency layer (made once before the first round, not timed).
- ``farm-cold``: ``farm build`` in gVisor, observed, from nothing.

``--no-lto`` builds every side with ``CARGO_PROFILE_RELEASE_LTO=false`` and
``CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16`` (cargo's default release profile): hello-serde's
own profile (thin LTO, one codegen unit) makes its last crate re-optimise every dependency,
which no layer can skip, so the 4x target is tested on the realistic profile too.

Prints a Markdown table (median, spread and the ratios) and saves JSON, with the load
average before and after every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from farm.backends.local import LocalBackend
from farm.layers.flow import build_with_layer
from farm.policy import baseline_env
from farm.records import Status
from farm.runner import Runner, resolve
from farm.settings import DEFAULT_IMAGE, MANAGED_LABEL, SANDBOX_UID, Settings
from farm.spec import build_spec
from farm.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-serde"
MARK = "hello-serde"
#: cargo's default release profile, whatever the project's Cargo.toml says.
NO_LTO = {"CARGO_PROFILE_RELEASE_LTO": "false", "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16"}


def loadavg() -> str:
    """The machine's load (1, 5, 15 min): a figure is only as good as the quiet it had."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def one_line_change(project: Path, round_no: int, main: Path | None = None) -> None:
    """Rewrite one line of the project's own code (``main``, default src/main.rs): a
    comment naming the round."""
    main = main or project / "src" / "main.rs"
    lines = main.read_text().splitlines()
    line = f"// bench round {round_no}"
    if lines and lines[-1].startswith("// bench round"):
        lines[-1] = line
    else:
        lines.append(line)
    main.write_text("\n".join(lines) + "\n")


def farm_build(home: Path, project: Path, *, layer: bool, env: dict[str, str]) -> float:
    settings = Settings(home=home, runtime="runsc", observe=True)
    runner = Runner(settings, LocalBackend(settings), Store(home))
    spec = resolve(build_spec({"source": str(project), "env": env}))
    start = time.monotonic()
    if layer:
        record, said = build_with_layer(runner, spec)
        if record.layer is None:
            raise SystemExit(f"farm-layer: build {record.id} used no layer: {said}")
    else:
        record = runner.build(spec)
    elapsed = time.monotonic() - start
    if record.status is not Status.SUCCEEDED:
        raise SystemExit(f"build {record.id} {record.status.value}: {record.notes}")
    return elapsed


def runc_build(
    project: Path,
    target: Path,
    *,
    env: dict[str, str],
    image: str = DEFAULT_IMAGE,
    argv: list[str] | None = None,
    mounts: tuple[tuple[Path, str], ...] = (),
) -> float:
    """cargo in a runc container of the same image, with a target dir kept across runs;
    ``mounts`` (host path, container path) are added read-only (a fetch phase's vendor
    directory and cargo config). Returns the wall time."""
    return runc_timed(project, target, env=env, image=image, argv=argv, mounts=mounts)[0]


def runc_timed(
    project: Path,
    target: Path,
    *,
    env: dict[str, str],
    image: str = DEFAULT_IMAGE,
    argv: list[str] | None = None,
    mounts: tuple[tuple[Path, str], ...] = (),
) -> tuple[float, str]:
    """``runc_build``'s wall time and cargo's output."""
    # outputs are named so resolve never looks for binaries: nothing is collected here
    spec = resolve(
        build_spec({"source": str(project), "env": env, "argv": argv, "outputs": ["out/**"]})
    )
    env = {**spec.env, **baseline_env(spec)}
    args = ["docker", "run", "--rm", "--runtime=runc", "--network=none", "--read-only"]
    args += ["--label", f"{MANAGED_LABEL}=true", "--user", f"{SANDBOX_UID}:{SANDBOX_UID}"]
    args += ["--cap-drop=ALL", "--security-opt=no-new-privileges"]
    args += ["--tmpfs", "/tmp:size=2g,mode=1777", "-w", "/src"]
    args += ["-v", f"{project}:/src:ro", "-v", f"{target}:/build/target"]
    for source, dest in mounts:
        args += ["-v", f"{source}:{dest}:ro"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    start = time.monotonic()
    done = subprocess.run([*args, image, *(spec.argv or [])], capture_output=True)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"runc build failed: {done.stderr.decode()[-2000:]}")
    return elapsed, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def table(times: dict[str, list[float]], loads: dict[str, list[str]] | None = None) -> str:
    """Median, runs and ratios per variant; with ``loads``, the 1-min load average
    before each run as a range."""
    base = statistics.median(times["runc-warm"])
    cold = statistics.median(times["farm-cold"])
    rows = [
        "| variant | runs (s) | median (s) | to runc warm | farm cold / this | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in times.items():
        med = statistics.median(runs)
        listed = ", ".join(f"{t:.1f}" for t in runs)
        ones = [float(x.split()[0]) for x in (loads or {}).get(name, [])]
        load = f"{min(ones):.1f}-{max(ones):.1f}" if ones else "?"
        rows.append(
            f"| {name} | {listed} | {med:.1f} | {med / base:.2f}x | {cold / med:.2f}x | {load} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--no-lto",
        action="store_true",
        help="cargo's default release profile on every side (no LTO, 16 codegen units)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "layers.json")
    args = parser.parse_args()
    env = dict(NO_LTO) if args.no_lto else {}
    with tempfile.TemporaryDirectory(prefix="farm-bench-layers-") as tmp:
        work = Path(tmp)
        project = work / "hello-serde"
        shutil.copytree(EXAMPLE, project)
        target = work / "runc-target"
        target.mkdir()
        shutil.chown(target, SANDBOX_UID, SANDBOX_UID)
        home = work / "home"
        print("warming: runc target dir, farm layer (not timed)", file=sys.stderr)
        runc_build(project, target, env=env)
        farm_build(home, project, layer=True, env=env)
        times: dict[str, list[float]] = {"runc-warm": [], "farm-layer": [], "farm-cold": []}
        loads: dict[str, list[str]] = {name: [] for name in times}
        for i in range(args.runs):
            for name in times:
                one_line_change(project, i * 10 + len(times[name]))
                before = loadavg()
                if name == "runc-warm":
                    took = runc_build(project, target, env=env)
                else:
                    took = farm_build(home, project, layer=name == "farm-layer", env=env)
                times[name].append(took)
                loads[name].append(f"{before} -> {loadavg()}")
                print(f"  round {i + 1}: {name:<11} {took:7.1f}s  load {before}", file=sys.stderr)
        subprocess.run(["rm", "-rf", str(target)], check=False)
    print(table(times, loads))
    result = {"env": env, "times": times, "loadavg": loads}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

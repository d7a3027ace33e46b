"""Where a trivial build's start plus teardown goes: the phases of farm's own Runner,
timed by wrapping the functions that do them (nothing is replaced; dockerd, runsc, the
observer daemon, mkfs and mount all run for real).

    python bench/phases.py [--runs 10] [--runtime runsc-observed] [--out FILE]
    python bench/phases.py --layered [--runs 3] [--out FILE]

Each run is `true` in a fresh sandbox, as in bench/starts.py. Prints the median and
the max of each phase's wall time per build (a phase nested in another counts in
both: ``backend.run`` holds create..teardown). Issue 14; docs/performance.md,
"Start, teardown and cache-hit latency".

``--layered``: where a rebuild from a dependency layer goes. A copy of
examples/hello-serde with cargo's default release profile (bench/layers.py --no-lto)
gets its layer once (not timed); then each round makes a one-line change and runs
``farm build --layer``'s path (``farm.buildflow.run_build``, runsc, observed) with its
phases timed, and runc's warm rebuild (bench/layers.runc_build) beside it. Both sides
also report the compile alone as cargo saw it (its ``Finished ... in Xs`` line), so
gVisor's compile overhead and farm's fixed costs per build come apart. docs/performance.md,
"Where a layered rebuild's time goes".
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

#: (module, attribute path, phase name), outermost first.
PHASES = [
    ("farm.runner", "Runner.__init__", "runner init (backend, observer)"),
    ("farm.runner", "Runner.build", "build (whole)"),
    ("farm.runner", "resolve", "resolve spec"),
    ("farm.backends.local", "LocalBackend.preflight", "preflight"),
    ("farm.backends.local", "trace_config_current", "  trace config check"),
    ("farm.backends.local", "LocalBackend.image_id", "  image lookup"),
    ("farm.runner", "Runner._toolchain_notes", "toolchain notes"),
    ("farm.observe.daemon", "HostObserver.ready", "observer ready"),
    ("farm.runner", "Runner._start_record", "start record (save)"),
    ("farm.runner", "Honeytokens.generate", "honeytokens generate"),
    ("farm.runner", "create_disk", "work disk: mkfs + mount"),
    ("farm.runner", "plant", "honeytokens plant"),
    ("farm.sinkhole", "prepare", "sinkhole prepare"),
    ("farm.runner", "snapshot", "snapshot"),
    ("farm.backends.local", "LocalBackend.run", "backend.run"),
    ("docker.models.containers", "ContainerCollection.create", "  docker create"),
    ("docker.models.containers", "Container.attach", "  docker attach"),
    ("docker.models.containers", "Container.start", "  docker start"),
    ("farm.backends.local", "LocalBackend._wait", "  docker wait"),
    ("docker.models.containers", "Container.reload", "  docker inspect"),
    ("farm.backends.local", "LocalBackend.teardown", "  teardown"),
    ("farm.backends.local", "LocalBackend._remove_container", "    docker rm"),
    ("farm.backends.local", "_containerd_leftovers", "    containerd leftovers"),
    ("farm.backends.local", "_host_leftovers", "    host leftovers"),
    ("farm.runner", "Runner._finish", "finish"),
    ("farm.runner", "_check_disk", "  disk usage"),
    ("farm.runner", "Runner._observe", "  observe"),
    ("farm.observe.daemon", "HostObserver.collect", "    observer collect (wait)"),
    ("farm.runner", "Runner._collect", "  collect outputs"),
    ("farm.runner", "Runner._save_log", "  save log"),
    ("farm.runner", "Runner._release", "release (whole)"),
    ("farm.runner", "release", "  umount + loop release"),
    ("farm.workdisk", "_loops_gone", "    loop clear wait"),
    ("farm.runner", "remove_tree", "  remove work dir"),
]


#: The phases of a rebuild from a dependency layer (``farm build --layer`` after the
#: result cache missed), outermost first.
LAYERED_PHASES = [
    ("farm.buildflow", "run_build", "farm build --layer (whole)"),
    ("farm.buildflow", "look_up", "result-cache lookup"),
    ("farm.buildflow", "digest", "  source digest"),
    ("farm.layers.flow", "build_with_layer", "build_with_layer"),
    ("farm.ecosystems", "detect", "  ecosystem detect (all calls)"),
    ("farm.ecosystems.cargo.vendor", "Cargo.layer_skeleton", "  layer skeleton"),
    ("farm.layers.flow", "key_for", "  layer key (image lookup)"),
    ("farm.layers.store", "LayerStore.find", "  layer find"),
    ("farm.runner", "Runner.build", "  Runner.build"),
    ("farm.runner", "resolve", "    resolve spec (all calls)"),
    ("farm.backends.local", "LocalBackend.preflight", "    preflight (all calls)"),
    ("farm.runner", "Runner._toolchain_notes", "    toolchain notes"),
    ("farm.observe.daemon", "HostObserver.ready", "    observer ready"),
    ("farm.runner", "Runner._start_record", "    start record"),
    ("farm.runner", "create_disk", "    work disk: mkfs + mount"),
    ("farm.layers.store", "LayerStore.intact", "    layer digest re-check"),
    ("farm.layers.overlay", "mount", "    overlay mount"),
    ("farm.runner", "snapshot", "    snapshot"),
    ("farm.runner", "Runner._keep_lockfile", "    keep lockfile"),
    ("farm.backends.local", "LocalBackend.run", "    backend.run"),
    ("docker.models.containers", "ContainerCollection.create", "      docker create"),
    ("docker.models.containers", "Container.start", "      docker start"),
    ("farm.backends.local", "LocalBackend._wait", "      docker wait (compile)"),
    ("farm.backends.local", "LocalBackend.teardown", "      teardown"),
    ("farm.runner", "Runner._finish", "    finish"),
    ("farm.runner", "_check_disk", "      disk usage"),
    ("farm.runner", "Runner._observe", "      observe"),
    ("farm.observe.daemon", "HostObserver.collect", "        observer collect (wait)"),
    ("farm.runner", "Runner._collect", "      collect outputs"),
    ("farm.runner", "collect", "        walk target/ + store"),
    ("farm.runner", "_refuse_tokens", "        honeytoken scan"),
    ("farm.runner", "Runner._save_log", "      save log"),
    ("farm.runner", "Runner._release", "    release (whole)"),
    ("farm.workdisk", "_unmount", "      umount (overlay, disk)"),
    ("farm.workdisk", "_loops_gone", "      loop clear wait"),
    ("farm.runner", "remove_tree", "      remove work dir"),
    ("farm.provenance", "attest", "attest (provenance)"),
    ("farm.cache", "Cache.offer", "cache store"),
]

#: cargo's last line: ``Finished `release` profile [optimized] target(s) in 7.21s``.
CARGO_FINISHED = re.compile(rb"Finished .* in (?:(\d+)m )?([0-9.]+)s")


@contextlib.contextmanager
def timed_phases(spent: dict[str, float], phases: list[tuple[str, str, str]]) -> Iterator[None]:
    """Wrap each phase's function so its wall time adds to ``spent[name]``."""
    undo = []
    for module_name, attr, name in phases:
        owner = importlib.import_module(module_name)
        *path, leaf = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        if not hasattr(owner, leaf):
            continue  # a phase this version of farm does not have
        original = owner.__dict__[leaf] if leaf in vars(owner) else getattr(owner, leaf)
        kind = type(original) if isinstance(original, (classmethod, staticmethod)) else None
        function = original.__func__ if kind else original

        def wrapper(*a, __f=function, __n=name, **kw):
            began = time.perf_counter()
            try:
                return __f(*a, **kw)
            finally:
                spent[__n] += time.perf_counter() - began

        functools.update_wrapper(wrapper, function)
        setattr(owner, leaf, kind(wrapper) if kind else wrapper)
        undo.append((owner, leaf, original))
    try:
        yield
    finally:
        for owner, leaf, original in reversed(undo):
            setattr(owner, leaf, original)


def one_build(home: Path, source: Path, runtime: str) -> dict[str, float]:
    from farm.backends.local import LocalBackend
    from farm.records import Status
    from farm.runner import Runner
    from farm.settings import Settings
    from farm.spec import build_spec
    from farm.store import Store

    spent: dict[str, float] = defaultdict(float)
    settings = Settings(
        home=home, runtime=runtime.removesuffix("-observed"), observe=runtime.endswith("-observed")
    )
    with timed_phases(spent, PHASES):
        began = time.perf_counter()
        runner = Runner(settings, LocalBackend(settings), Store(home))
        record = runner.build(build_spec({"source": str(source), "argv": ["true"]}))
        spent["TOTAL (as bench/starts.py)"] = time.perf_counter() - began
    if record.status is not Status.SUCCEEDED:
        raise SystemExit(f"build {record.id} {record.status.value}: {record.notes}")
    return dict(spent)


def cargo_seconds(log: bytes) -> float | None:
    """The compile as cargo timed it (its last ``Finished ... in`` line), if it said."""
    found = CARGO_FINISHED.findall(log)
    if not found:
        return None
    minutes, seconds = found[-1]
    return int(minutes or 0) * 60 + float(seconds)


def layered_build(home: Path, project: Path, env: dict[str, str]) -> dict[str, float]:
    """One ``farm build --layer`` of ``project`` (runsc, observed), its phases timed."""
    from farm.backends.local import LocalBackend
    from farm.buildflow import run_build
    from farm.records import Status
    from farm.runner import Runner
    from farm.settings import Settings
    from farm.spec import build_spec
    from farm.store import Store

    spent: dict[str, float] = defaultdict(float)
    settings = Settings(home=home, runtime="runsc", observe=True)
    with timed_phases(spent, LAYERED_PHASES):
        began = time.perf_counter()
        runner = Runner(settings, LocalBackend(settings), Store(home))
        spec = build_spec({"source": str(project), "env": env})
        outcome = run_build(runner, spec, use_layer=True)
        spent["TOTAL (in process)"] = time.perf_counter() - began
    record = outcome.record
    if record.status is not Status.SUCCEEDED or record.layer is None or outcome.cached:
        raise SystemExit(
            f"build {record.id} {record.status.value}, layer {record.layer}: "
            f"{record.notes} {outcome.said}"
        )
    if record.log_sha256:
        took = cargo_seconds(Store(home).blob_path(record.log_sha256).read_bytes())
        if took is not None:
            spent["cargo's own compile time"] = took
    return dict(spent)


def layered(runs: int) -> tuple[list[str], list[dict[str, float]]]:
    """``runs`` rounds of a one-line change, runc's warm rebuild and farm's layered one."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from layers import EXAMPLE, NO_LTO, one_line_change, runc_build, runc_timed

    from farm.backends.local import LocalBackend
    from farm.layers.flow import build_with_layer
    from farm.runner import Runner, resolve
    from farm.settings import SANDBOX_UID, Settings
    from farm.spec import build_spec
    from farm.store import Store

    env = dict(NO_LTO)
    results = []
    with tempfile.TemporaryDirectory(prefix="farm-bench-phases-") as tmp:
        work = Path(tmp)
        project, target, home = work / "hello-serde", work / "runc-target", work / "home"
        shutil.copytree(EXAMPLE, project)
        target.mkdir()
        shutil.chown(target, SANDBOX_UID, SANDBOX_UID)
        print("warming: runc target dir, farm layer (not timed)", file=sys.stderr)
        runc_build(project, target, env=env)
        settings = Settings(home=home, runtime="runsc", observe=True)
        runner = Runner(settings, LocalBackend(settings), Store(home))
        build_with_layer(runner, resolve(build_spec({"source": str(project), "env": env})))
        for i in range(runs):
            one_line_change(project, i * 2)
            load = Path("/proc/loadavg").read_text().split()[0]
            wall, said = runc_timed(project, target, env=env)
            runc = {"runc warm: wall": wall}
            compile_s = cargo_seconds(said.encode())
            if compile_s is not None:
                runc["runc warm: cargo's own compile time"] = compile_s
            one_line_change(project, i * 2 + 1)
            spent = {**layered_build(home, project, env), **runc}
            spent["load (1 min, before)"] = float(load)
            print(
                f"  round {i + 1}: runc {wall:.1f}s farm {spent['TOTAL (in process)']:.1f}s "
                f"load {load}",
                file=sys.stderr,
            )
            results.append(spent)
        subprocess.run(["rm", "-rf", str(target)], check=False)
    names = [name for _, _, name in LAYERED_PHASES]
    names += [
        "TOTAL (in process)",
        "cargo's own compile time",
        "runc warm: wall",
        "runc warm: cargo's own compile time",
        "load (1 min, before)",
    ]
    return names, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int)
    parser.add_argument("--runtime", default="runsc-observed")
    parser.add_argument("--layered", action="store_true", help="a rebuild from a dependency layer")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.layered:
        names, runs = layered(args.runs or 3)
        return report(
            f"layered rebuild of hello-serde (no LTO), {len(runs)} rounds", names, runs, args.out
        )
    args.runs = args.runs or 10
    runs = []
    with tempfile.TemporaryDirectory(prefix="farm-bench-phases-") as tmp:
        source = Path(tmp) / "trivial"
        source.mkdir()
        (source / "README").write_text("trivial\n")
        for _ in range(args.runs):
            runs.append(one_build(Path(tmp) / "home", source, args.runtime))
    names = [name for _, _, name in PHASES] + ["TOTAL (as bench/starts.py)"]
    return report(f"{args.runtime}, {args.runs} runs", names, runs, args.out)


def report(title: str, names: list[str], runs: list[dict[str, float]], out: Path | None) -> int:
    """Print each phase's median and max per build (ms); save them and the runs as JSON."""
    summary = {}
    print(f"{title}, load {Path('/proc/loadavg').read_text().strip()}")
    print(f"{'phase':<40} {'p50 ms':>9} {'max ms':>9}")
    for name in names:
        values = [r.get(name, 0.0) * (1 if name.startswith("load") else 1000) for r in runs]
        if not any(values):
            continue
        summary[name] = {
            "p50_ms": round(statistics.median(values), 1),
            "max_ms": round(max(values), 1),
        }
        print(f"{name:<40} {summary[name]['p50_ms']:>9.1f} {summary[name]['max_ms']:>9.1f}")
    if out:
        out.write_text(json.dumps({"title": title, "phases": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

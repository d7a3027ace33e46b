"""Where a trivial build's start plus teardown goes: the phases of farm's own Runner,
timed by wrapping the functions that do them (nothing is replaced; dockerd, runsc, the
observer daemon, mkfs and mount all run for real).

    python bench/phases.py [--runs 10] [--runtime runsc-observed] [--out FILE]

Each run is `true` in a fresh sandbox, as in bench/starts.py. Prints the median and
the max of each phase's wall time per build (a phase nested in another counts in
both: ``backend.run`` holds create..teardown). Issue 14; docs/performance.md,
"Start, teardown and cache-hit latency".
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import statistics
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


@contextlib.contextmanager
def timed_phases(spent: dict[str, float]) -> Iterator[None]:
    """Wrap each phase's function so its wall time adds to ``spent[name]``."""
    undo = []
    for module_name, attr, name in PHASES:
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
    with timed_phases(spent):
        began = time.perf_counter()
        runner = Runner(settings, LocalBackend(settings), Store(home))
        record = runner.build(build_spec({"source": str(source), "argv": ["true"]}))
        spent["TOTAL (as bench/starts.py)"] = time.perf_counter() - began
    if record.status is not Status.SUCCEEDED:
        raise SystemExit(f"build {record.id} {record.status.value}: {record.notes}")
    return dict(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--runtime", default="runsc-observed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="farm-bench-phases-") as tmp:
        source = Path(tmp) / "trivial"
        source.mkdir()
        (source / "README").write_text("trivial\n")
        for _ in range(args.runs):
            runs.append(one_build(Path(tmp) / "home", source, args.runtime))
    names = [name for _, _, name in PHASES] + ["TOTAL (as bench/starts.py)"]
    summary = {}
    print(f"{args.runtime}, {args.runs} runs, load {Path('/proc/loadavg').read_text().strip()}")
    print(f"{'phase':<36} {'p50 ms':>8} {'max ms':>8}")
    for name in names:
        values = [r.get(name, 0.0) * 1000 for r in runs]
        if not any(values):
            continue
        summary[name] = {
            "p50_ms": round(statistics.median(values), 1),
            "max_ms": round(max(values), 1),
        }
        print(f"{name:<36} {summary[name]['p50_ms']:>8.1f} {summary[name]['max_ms']:>8.1f}")
    if args.out:
        args.out.write_text(
            json.dumps({"runtime": args.runtime, "phases": summary, "runs": runs}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

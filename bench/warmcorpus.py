"""Warm rebuilds of the realworld corpus: the rebuild after a one-line change to a
program's own code, under runc with a warm target directory and with `farm build
--layer`, next to farm's own cold build (issue 14's targets: the layered rebuild at most
1.3x runc's warm rebuild, and at least 4x faster than farm's cold build).

Callers: ``bench/realworld.py --warm`` (see its docstring for the command line).

Setup, not timed: the program's loopback mirror, its lock resolved against it (in a
sandbox), the mirror served on 127.0.0.1, the fetch phase run once on the host for the
runc side (farm's own code: it downloads, verifies and unpacks, running nothing of a
crate), one runc build into the kept target directory, and one ``farm build --layer``
that makes the layer. Then each round, in turn (so drift on the machine hits every side
alike), after a one-line change to the program's main source file:

- ``runc-warm``: cargo under runc, same image, environment, user, read-only root and
  ``/src``, ``/build/target`` and ``/vendor`` paths, the target directory kept;
- ``farm-layer``: ``farm build --layer --registry URL`` in gVisor, observed (the CLI,
  as a user runs it; its fetch phase comes from the warm crate cache);
- ``farm-cold``: ``farm build --no-cache --registry URL`` in gVisor, observed, from an
  empty target directory (same FARM_HOME, so its crates come from the cache too).

Every run records its wall time, the load average before and after, and which crates
cargo compiled (``Compiling`` lines of its log): a layered rebuild that compiles a
dependency says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from bench.layers import NO_LTO, loadavg, one_line_change, runc_timed
from farm.fetch.cache import CrateCache
from farm.fetch.phase import fetch
from farm.fetch.registry import registry_from_cli
from farm.fetch.resolve import resolve_lock
from farm.mirror import serve as mirror_serve
from farm.settings import SANDBOX_UID, Settings
from tests.realworld.programs import Program, fill_mirror, program_source

VARIANTS = ("runc-warm", "farm-layer", "farm-cold")


def main_source(src: Path, program: Program) -> Path:
    """The file of the program's binary target: its ``[[bin]]`` path, else cargo's
    default places for it."""
    manifest = tomllib.loads((src / "Cargo.toml").read_text())
    for entry in manifest.get("bin", []):
        if entry.get("name") == program.binary and entry.get("path"):
            return src / entry["path"]
    for candidate in (f"src/bin/{program.binary}.rs", "src/main.rs"):
        if (src / candidate).is_file():
            return src / candidate
    raise SystemExit(f"{program.id}: no source file for the binary {program.binary}")


def compiled(log: str) -> list[str]:
    """The crates cargo compiled, from its ``Compiling NAME VERSION`` lines."""
    lines = (line.strip() for line in log.splitlines())
    return [" ".join(line.split()[1:3]) for line in lines if line.startswith("Compiling ")]


def farm_cli(
    home: Path, src: Path, program: Program, index_url: str, env: dict[str, str], *, layer: bool
) -> dict:
    """One ``farm build`` as a user runs it; returns the run's figures."""
    host_env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    host_env["FARM_HOME"] = str(home)
    argv = [sys.executable, "-m", "farm.cli", "build", str(src), "--json"]
    argv += ["--registry", index_url, "--image", program.image]
    argv += ["--output", f"target/release/{program.binary}"]
    argv += ["--layer"] if layer else ["--no-cache"]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    before = loadavg()
    began = time.monotonic()
    argv += ["--", *program.argv]
    done = subprocess.run(argv, capture_output=True, text=True, env=host_env)
    wall = time.monotonic() - began
    after = loadavg()
    if done.returncode != 0:
        said = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise SystemExit(f"{program.id}: exit {done.returncode}\n{said}")
    record = json.loads(done.stdout)
    if layer and not record.get("layer"):
        raise SystemExit(f"{program.id}: build {record['id']} used no layer: {record.get('notes')}")
    logs = subprocess.run(
        [sys.executable, "-m", "farm.cli", "logs", record["id"]],
        capture_output=True,
        text=True,
        env=host_env,
    ).stdout
    return {
        "wall": round(wall, 1),
        "build": record["duration_seconds"],
        "id": record["id"],
        "layer": (record.get("layer") or {}).get("id"),
        "sha256": record["artifacts"][0]["sha256"],
        "loadavg_before": before,
        "loadavg_after": after,
        "compiled": compiled(logs),
    }


def runc_run(src: Path, target: Path, program: Program, env: dict, mounts: tuple) -> dict:
    before = loadavg()
    wall, log = runc_timed(
        src, target, env=env, image=program.image, argv=program.argv, mounts=mounts
    )
    return {
        "wall": round(wall, 1),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "compiled": compiled(log),
    }


def measure_warm(program: Program, work: Path, rounds: int, no_lto: bool) -> dict:
    env = dict(NO_LTO) if no_lto else {}
    mirror, _ = fill_mirror(program, work / "mirror")
    src = program_source(program, mirror, work / "src")
    home = work / "home"
    settings = Settings.from_env({"FARM_HOME": str(home)})
    resolved = resolve_lock(src, mirror.path, settings=settings, image=program.image)
    (src / "Cargo.lock").write_text(resolved.text)
    main = main_source(src, program)
    server = mirror_serve.MirrorServer(mirror, "127.0.0.1", 0).start()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    try:
        fetched = fetch(
            src, work / "fetch", registry_from_cli(server.index_url), CrateCache(work / "crates")
        )
        mounts = tuple((m.source, m.target) for m in fetched.build_mounts())
        target = work / "runc-target"
        target.mkdir()
        shutil.chown(target, SANDBOX_UID, SANDBOX_UID)
        print(f"{program.id}: warming runc target/ and farm's layer (not timed)", file=sys.stderr)
        warm = {
            "runc": runc_run(src, target, program, env, mounts),
            "farm-layer-made": farm_cli(home, src, program, server.index_url, env, layer=True),
        }
        for i in range(rounds):
            for name in VARIANTS:
                one_line_change(src, i * 10 + len(runs[name]), main)
                if name == "runc-warm":
                    run = runc_run(src, target, program, env, mounts)
                else:
                    layer = name == "farm-layer"
                    run = farm_cli(home, src, program, server.index_url, env, layer=layer)
                runs[name].append(run)
                print(
                    f"  round {i + 1}: {name:<11} {run['wall']:7.1f}s  load {run['loadavg_before']}"
                    f"  compiled {len(run['compiled'])}",
                    file=sys.stderr,
                )
    finally:
        server.shutdown()
        server.server_close()
        subprocess.run(["rm", "-rf", str(work / "runc-target")], check=False)
    return {
        "program": program.id,
        "argv": program.argv,
        "env": env,
        "changed": str(main.relative_to(src)),
        "warmup": warm,
        "runs": runs,
    }

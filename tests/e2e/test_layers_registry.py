"""Dependency layers with a fetch phase and cargo selection flags (docs/layers.md), for
real: crates.io's serde 1.0.152 (whose build.rs says ``cargo:rerun-if-changed=build.rs``)
and a small crate, served by a registry on 127.0.0.1, built with ``--layer --registry``
and ``--bin fetched --no-default-features``. After a one-line change only the project's
crate compiles: each fetch phase unpacks serde anew, and without one fixed mtime on the
vendored files its build script would look stale and serde would compile again."""

from __future__ import annotations

import json
from pathlib import Path

from tests.registry import TestRegistry

from .conftest import farm, farm_json
from .test_fetch_phase import _project, registry  # noqa: F401 (pytest fixture)

FLAGS = ["cargo", "build", "--release", "--locked", "--offline"]
FLAGS += ["--bin", "fetched", "--no-default-features"]


def test_a_layered_rebuild_with_a_registry_and_flags_compiles_only_the_project(
    home: Path,
    tmp_path: Path,
    registry: TestRegistry,  # noqa: F811 (the fixture)
) -> None:
    src = _project(tmp_path / "fetched")
    build = ["build", str(src), "--registry", registry.index, "--layer", "--", *FLAGS]
    done = farm(home, "build", "--json", *build[1:])
    first = json.loads(done.stdout)
    assert done.returncode == 0 and first["layer"], (first.get("notes"), done.stderr)
    main = src / "src" / "main.rs"
    main.write_text(main.read_text() + "// one line changed\n")
    code, second = farm_json(home, *build)
    assert code == 0 and second["layer"]["id"] == first["layer"]["id"], second
    log = farm(home, "logs", second["id"]).stdout
    compiled = [line.split()[1] for line in log.splitlines() if "Compiling " in line]
    assert compiled == ["fetched"], log

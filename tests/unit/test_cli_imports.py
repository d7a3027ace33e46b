"""What `farm build` imports before it knows whether the cache has the result: a cache
hit is a whole CLI process, so every module it loads is paid on every hit (issue 14:
a hit under 1 s). Each case runs a fresh interpreter and reads its ``sys.modules``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Modules a cache hit never needs: the sandbox machinery, the fetch phase, the
#: observer, the Kubernetes controller and the other subcommands' own modules.
NOT_ON_A_HIT = (
    "kubernetes",
    "farm.k8s",
    # The fetch phase; not farm.fetch.git, the cargo ecosystem's reader of a commit
    # (stdlib only), which resolving the spec's defaults loads with the ecosystem.
    "farm.fetch.phase",
    "farm.fetch.registry",
    "farm.fetch.cache",
    "farm.fetch.resolve",
    "farm.observe",
    "farm.runner",
    "farm.workdisk",
    "farm.honeytokens",
    "farm.layers",
    "farm.mirror",
    "farm.images",
    "farm.metrics",
    "prometheus_client",
    "farm.report",
    "farm.httpserver",
)


def loaded(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    """The modules of ``NOT_ON_A_HIT`` (or below one) that were loaded."""
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in NOT_ON_A_HIT))


def test_the_build_path_of_the_cli_imports_nothing_a_hit_does_not_need() -> None:
    # farm.cli, its parser for `build`, the cache lookup and the local backend: all a
    # hit runs before it prints the cached record.
    code = (
        "import farm.cli, farm.buildflow, farm.backends.local\n"
        "farm.cli._parser('build').parse_args(['build', '.'])"
    )
    assert heavy(loaded(code)) == []


def test_a_hit_needs_no_registry_module_without_configured_registries(tmp_path: Path) -> None:
    code = "from farm.settings import Settings\nSettings.from_env()"
    assert "farm.fetch.registry" not in loaded(code, {"FARM_HOME": str(tmp_path)})


def test_configured_registries_are_still_read(tmp_path: Path) -> None:
    # The lazy import must not lose FARM_REGISTRIES_JSON: a bad value still fails.
    bad = subprocess.run(
        [sys.executable, "-m", "farm.cli", "build", str(tmp_path), "--", "true"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FARM_HOME": str(tmp_path / "home"),
            "FARM_REGISTRIES_JSON": "[{]",
        },
    )
    assert bad.returncode == 2 and "FARM_REGISTRIES_JSON" in bad.stderr, bad.stderr


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--help"], "node-monitor"),
        (["--version"], "farm 0.1.0"),
        (["observer", "--help"], "/run/farm/observer.sock"),
        (["node-monitor", "--help"], "--run-namespace"),
        (["image", "build", "--help"], "trixie"),
        (["mirror", "--help"], "create"),
        (["diff", "--help"], "PKG[@A]"),
    ],
)
def test_every_subcommand_is_still_there_when_asked_for(argv: list[str], said: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "farm.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert said in done.stdout

"""The ecosystem seam (farm.ecosystems): the runner, the cluster objects and the observer
ask the registered ecosystems and never name cargo, so a new package manager is one more
``Ecosystem`` beside cargo. Proved with a toy ecosystem that exists only in this test."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from farm import ecosystems
from farm.ecosystems import Package
from farm.errors import SpecError
from farm.observe.classify import classify
from farm.observe.processes import Attribution, Process, ProcessTable
from farm.runner import resolve
from farm.spec import BuildSpec

from .test_classify import ev, inet

ROOT = Path(__file__).resolve().parents[2]
#: Modules that must stay ecosystem-neutral: whatever is cargo's goes behind the seam.
NEUTRAL = [
    "farm/runner.py",
    "farm/sandbox.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "farm/observe").glob("*.py")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "farm/k8s").glob("*.py")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "farm/layers").glob("*.py")),
]


class Toy:
    """A package manager called ``toy``: a ``Toyfile`` marks its projects, and each
    process ``toyd`` starts is a step named by its own executable."""

    name = "toy"
    marker = "Toyfile"

    def detect(self, source_fd: int) -> bool:
        try:
            return stat.S_ISREG(os.stat("Toyfile", dir_fd=source_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def packages(self, source_fd: int) -> list[Package]:
        return []

    def vendor(self, package: Package, data: bytes, dest: Path) -> int:
        raise NotImplementedError

    def vendor_git(self, package: Package, checkout: object, dest: Path) -> int:
        raise NotImplementedError

    def finish(self, packages: list[Package], dest: Path) -> list[ecosystems.BuildMount]:
        return []

    def default_argv(self) -> list[str]:
        return ["toyd", "all"]

    def default_outputs(self, source: Path, within: Path | None) -> list[str]:
        return ["toys/**"]

    def check_toolchain(
        self, source: Path, image: str, labels: dict[str, str] | None, within: Path | None
    ) -> list[str]:
        return []

    def failure_hint(self, log_tail: list[str]) -> str | None:
        return "install more toys" if any("toy missing" in line for line in log_tail) else None

    def lock_versions(self, source: Path) -> dict[str, str]:
        return {"robot": "2.0"} if (source / "Toyfile").exists() else {}

    def attributor(self, versions: dict[str, str]) -> ToyAttributor:
        return ToyAttributor(versions)


class ToyAttributor:
    name = "toy"

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions

    def is_driver(self, executable: str) -> bool:
        return executable.rsplit("/", 1)[-1] == "toyd"

    def first_exec(self, proc: Process, fields: dict, table: ProcessTable) -> None:
        proc.facts["toy"] = proc.executable.rsplit("/", 1)[-1]

    def opened(self, proc: Process, path: str, time_ns: int, table: ProcessTable) -> None:
        pass

    def attribute(self, step: Process, time_ns: int) -> Attribution:
        name = step.facts.get("toy")
        return Attribution(name, self.versions.get(name or ""), "recipe")


def toy_build() -> list:
    """toyd (the build command) starts a recipe ``robot`` whose child connects out."""
    return [
        ev("container_start", tgid=1, args=["toyd", "all"]),
        ev("clone", tgid=1, tid=3, created_thread_group_id=7),
        ev("exec", tgid=7, binary_path="/toys/robot", argv=["robot"], env=[]),
        ev("clone", tgid=7, created_thread_group_id=8),
        ev("exec", tgid=8, binary_path="/bin/sh", argv=["sh"], env=[]),
        ev("socket", tgid=8, domain=2, type=1, exit={"result": 3}),
        ev("connect", tgid=8, fd=3, address=inet("192.0.2.1", 443), exit={"errorno": 101}),
    ]


def test_attribution_uses_a_registered_ecosystems_rules() -> None:
    [unknown] = classify(toy_build(), {})
    assert (unknown.package, unknown.role) == (None, "other")
    with ecosystems.registered(Toy):
        [action] = classify(toy_build(), {"robot": "2.0"})
    assert (action.package, action.version, action.role) == ("robot", "2.0", "recipe")
    assert action.line().startswith("robot 2.0 (recipe): connect 192.0.2.1:443/tcp")


def test_the_runner_fills_defaults_from_the_detected_ecosystem(tmp_path: Path) -> None:
    (tmp_path / "Toyfile").write_text("all: robot\n")
    spec = BuildSpec(source=tmp_path, source_date_epoch=0)
    with pytest.raises(SpecError, match=r"without Cargo\.toml; pass"):
        resolve(spec)
    with ecosystems.registered(Toy):
        filled = resolve(spec)
        assert (filled.argv, filled.outputs) == (["toyd", "all"], ["toys/**"])
        assert ecosystems.lock_versions(tmp_path) == {"robot": "2.0"}
        with pytest.raises(SpecError, match=r"without Cargo\.toml or Toyfile; pass"):
            resolve(BuildSpec(source=tmp_path / "..", source_date_epoch=0))
    assert [e.name for e in ecosystems.ecosystems()] == ["cargo"]


def test_a_failed_build_gets_the_ecosystems_hint() -> None:
    from farm.runner import _failure_hints

    assert _failure_hints(["error: toy missing"]) == []
    with ecosystems.registered(Toy):
        assert _failure_hints(["error: toy missing"]) == ["install more toys"]


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("module", NEUTRAL)
def test_neutral_modules_do_not_name_cargo(module: str) -> None:
    text = (ROOT / module).read_text()
    cargo = [n for n in _imports(ast.parse(text)) if n.startswith("farm.ecosystems.cargo")]
    assert cargo == [], f"{module} imports {cargo}: ask farm.ecosystems instead"
    assert "Cargo.toml" not in text, f"{module} names Cargo.toml: ask the detected ecosystem"
    assert "farm.cargo" not in _imports(ast.parse(text))


def test_the_cluster_collector_takes_default_outputs_from_the_ecosystem(tmp_path: Path) -> None:
    from farm.k8s import collector

    (tmp_path / "Toyfile").write_text("all: robot\n")
    assert collector.outputs("", tmp_path) == []
    assert collector.outputs("a,b", tmp_path) == ["a", "b"]
    with ecosystems.registered(Toy):
        assert collector.outputs("", tmp_path) == ["toys/**"]
        assert ecosystems.default().default_argv()[0] == "cargo"  # a Build without argv

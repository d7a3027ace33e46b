"""Which cargo step and package a process of the build is: cargo's ``Attributor``.

Callers: ``farm.observe.processes.ProcessTable`` through ``farm.ecosystems.attributors``
(the table tracks pids, clones and execs; this names who a step is), and the runner's
observation step through ``farm.ecosystems.lock_versions``. Only facts the build cannot
forge name a package (docs/observer.md, "Attribution"):

- A *step* is a process cloned by the build's outermost cargo (cargo is the driver).
- A build-script step is named by the executable cargo chose for it,
  ``target/<profile>/build/<pkg>-<hash>/build-script-build``; a rustc step by the
  environment cargo gave it (the process's own first exec, made by cargo).
- Proc-macro libraries: only a rustc *step* that compiled a proc macro records which
  package the library it writes (``--out-dir``/``lib<crate><extra>.so``) belongs to.
  A rustc step has *loaded* a macro when it opens one of the libraries (a ``.so``: an
  ``.rlib`` is data, not code) cargo named in its own ``--extern`` arguments, the first
  time; from then on its actions are the macro's, compiling the step's package. A
  library opened by any other path (a fake ``libserde_derive-….so``) names nobody. Code
  of any loaded macro may be running, so every macro loaded so far is a *suspect*
  (allow rules must match them all).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from farm import tomlread
from farm.observe.paths import lexical
from farm.observe.processes import Attribution, Process, ProcessTable

BUILD_SCRIPT = re.compile(r"/build/(?P<pkg>[^/]+)-(?P<hash>[0-9a-f]{16})/build-script-build$")
_CARGO_VARS = ("CARGO_PKG_NAME=", "CARGO_PKG_VERSION=", "CARGO_CRATE_NAME=")
NAME = "cargo"


@dataclass
class CargoFacts:
    """What cargo's first exec of a process said (``Process.facts["cargo"]``)."""

    #: CARGO_PKG_NAME / CARGO_PKG_VERSION / CARGO_CRATE_NAME of the first exec.
    env: dict[str, str] = field(default_factory=dict)
    #: A rustc step's ``--extern`` libraries, as cargo passed them.
    externs: dict[str, str] = field(default_factory=dict)
    #: (time, .so path) of each proc-macro library this rustc step loaded.
    loaded: list[tuple[int, str]] = field(default_factory=list)


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _facts(proc: Process) -> CargoFacts:
    return proc.facts.get(NAME) or CargoFacts()


class CargoAttributor:
    name = NAME

    def __init__(self, versions: dict[str, str]) -> None:
        #: Fallback name -> version (Cargo.lock) for a proc macro whose build we missed.
        self.versions = versions
        #: Library path -> (package, version) for proc macros a cargo-started rustc built.
        self._macros: dict[str, tuple[str, str]] = {}

    def is_driver(self, executable: str) -> bool:
        return _basename(executable) == "cargo"

    def first_exec(self, proc: Process, fields: dict, table: ProcessTable) -> None:
        env = fields.get("env", [])
        facts = proc.facts[NAME] = CargoFacts(
            env=dict(v.split("=", 1) for v in env if v.startswith(_CARGO_VARS))
        )
        if _basename(proc.executable) != "rustc" or table.step_of(proc.tgid) is not proc:
            return  # not a rustc cargo started: its arguments and environment prove nothing
        argv = fields.get("argv", [])
        facts.externs = _externs(argv)
        if "proc-macro" in argv:
            self._remember_macro(facts, argv)

    def _remember_macro(self, facts: CargoFacts, argv: list[str]) -> None:
        env = facts.env
        crate, out_dir = _flag(argv, "--crate-name"), _flag(argv, "--out-dir")
        extra = next((a.split("=", 1)[1] for a in argv if a.startswith("extra-filename=")), "")
        if crate and out_dir and env.get("CARGO_PKG_NAME"):
            library = lexical(f"{out_dir}/lib{crate}{extra}.so")
            self._macros[library] = (env["CARGO_PKG_NAME"], env.get("CARGO_PKG_VERSION", ""))

    def opened(self, proc: Process, path: str, time_ns: int, table: ProcessTable) -> None:
        """A rustc step opening a library cargo passed it with --extern: a macro load."""
        library = lexical(path)
        # Only a dylib is loaded as code: the .rlib/.rmeta of an ordinary dependency
        # (also an --extern) is data to rustc, and must not make its crate a suspect.
        if not library.endswith(".so"):
            return
        facts = _facts(proc)
        if library not in facts.externs.values() or table.step_of(proc.tgid) is not proc:
            return
        if all(loaded != library for _, loaded in facts.loaded):
            facts.loaded.append((time_ns, library))

    def attribute(self, step: Process, time_ns: int) -> Attribution:
        facts = _facts(step)
        env = facts.env
        if m := BUILD_SCRIPT.search(step.first_exe):
            # The path cargo chose names the package; its environment only the version.
            package = m.group("pkg")
            version = self.versions.get(package) or env.get("CARGO_PKG_VERSION")
            return Attribution(package, version, "build script")
        package, version = env.get("CARGO_PKG_NAME"), env.get("CARGO_PKG_VERSION")
        if _basename(step.first_exe) != "rustc":
            return Attribution(package, version, "other")
        loaded = [self._macro(facts, path) for t, path in facts.loaded if t <= time_ns]
        if loaded:
            macro, macro_version = loaded[-1]
            suspects = tuple(sorted({name for name, _ in loaded}))
            return Attribution(macro, macro_version, "proc macro", package, suspects)
        return Attribution(package, version, "rustc", compiling=package)

    def _macro(self, facts: CargoFacts, library: str) -> tuple[str, str | None]:
        """The package of a macro library: the cargo-started rustc that wrote it, or
        (its compilation unseen) the name cargo gave it in the step's --extern."""
        if library in self._macros:
            return self._macros[library]
        name = next(n for n, p in facts.externs.items() if p == library)
        for candidate in (name, name.replace("_", "-")):
            if candidate in self.versions:
                return candidate, self.versions[candidate]
        return name.replace("_", "-"), None


def lock_versions(source: Path) -> dict[str, str]:
    """Package name -> version from ``source``'s Cargo.lock, where the name is
    unambiguous. A Cargo.lock that is a link is not followed: {}."""
    lock = source / "Cargo.lock"
    if lock.is_symlink():
        return {}
    try:
        packages = tomlread.loads(lock.read_text()).get("package", [])
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    seen: dict[str, list[str]] = {}
    for p in packages:
        seen.setdefault(p.get("name", ""), []).append(p.get("version", ""))
    return {name: versions[0] for name, versions in seen.items() if len(versions) == 1}


def _externs(argv: list[str]) -> dict[str, str]:
    """``--extern name=path`` arguments (cargo's, also ``--extern=name=path``)."""
    externs = {}
    for i, word in enumerate(argv):
        value = argv[i + 1] if word == "--extern" and i + 1 < len(argv) else ""
        value = word.removeprefix("--extern=") if word.startswith("--extern=") else value
        name, _, path = value.partition("=")
        if name and path:
            externs[name] = lexical(path)
    return externs


def _flag(argv: list[str], name: str) -> str:
    """The value after ``name`` (``--crate-name x``), else ""."""
    for i, word in enumerate(argv[:-1]):
        if word == name:
            return argv[i + 1]
    return ""

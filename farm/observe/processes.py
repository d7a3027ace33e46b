"""The sandbox's process tree as gVisor recorded it, and which cargo step each process
belongs to.

Callers: ``farm.observe.classify`` feeds every event through :meth:`ProcessTable.track`
in time order and asks :meth:`ProcessTable.attribute` who made an action. Everything
comes from gVisor's ``clone``/``exec``/``task_exit``/``open`` events, never from the
build's output.

Attribution rule (docs/observer.md, "Attribution"): only facts the build cannot
forge name a package.

- A *step* is a process cloned by the build's outermost cargo. Whatever a step starts
  (another cargo, a rustc with a forged ``CARGO_PKG_NAME``) is that step's doing.
- A build-script step is named by the executable cargo chose for it,
  ``target/<profile>/build/<pkg>-<hash>/build-script-build``; a rustc step by the
  environment cargo gave it (the process's own first exec, made by cargo).
- Proc-macro libraries: only a rustc *step* that compiled a proc macro records which
  package the library it writes (``--out-dir``/``lib<crate><extra>.so``) belongs to.
  A rustc step has *loaded* a macro when it opens one of the libraries (a ``.so``: an
  ``.rlib`` is data, not code) cargo named in
  its own ``--extern`` arguments, the first time; from then on its actions are the
  macro's, compiling the step's package. A library opened by any other path (a fake
  ``libserde_derive-….so``) names nobody. Code of any loaded macro may be running,
  so every macro loaded so far is a *suspect* (allow rules must match them all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from farm.observe.events import TraceEvent
from farm.observe.paths import lexical

#: A build controls its processes' argv and cwd; in an action they are evidence, never
#: matched by allow rules, so a process and an action keep this much of them
#: (farm.observe.verdict caps how many actions a record lists).
ARGV_ITEMS, ARGV_CHARS = 32, 256

BUILD_SCRIPT = re.compile(r"/build/(?P<pkg>[^/]+)-(?P<hash>[0-9a-f]{16})/build-script-build$")


@dataclass(frozen=True)
class Attribution:
    """Who made an action: the cargo package and its role, when a step is known."""

    package: str | None = None
    version: str | None = None
    #: "build script", "proc macro", "rustc" or "other".
    role: str = "other"
    #: For rustc and proc macros: the package rustc was compiling.
    compiling: str | None = None
    #: For proc macros: every macro package the rustc step had loaded by then.
    suspects: tuple[str, ...] = ()


@dataclass
class Process:
    tgid: int
    parent: int | None = None
    #: The process that cloned this one, held as an object: a pid reused later by
    #: another process must not change whose child this is.
    parent_proc: Process | None = field(default=None, repr=False, compare=False)
    #: The parent's executable when it cloned this process.
    parent_exe: str = ""
    executable: str = ""
    argv: list[str] = field(default_factory=list)
    #: CARGO_PKG_NAME / CARGO_PKG_VERSION / CARGO_CRATE_NAME of the first exec.
    cargo_env: dict[str, str] | None = None
    first_exe: str = ""
    start_ns: int = 0
    exit_ns: int | None = None
    #: (time, .so path) of each proc-macro library this rustc step loaded.
    loaded: list[tuple[int, str]] = field(default_factory=list)
    #: A rustc step's ``--extern`` libraries, as cargo passed them.
    externs: dict[str, str] = field(default_factory=dict)


_CARGO_VARS = ("CARGO_PKG_NAME=", "CARGO_PKG_VERSION=", "CARGO_CRATE_NAME=")


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class ProcessTable:
    def __init__(self, versions: dict[str, str] | None = None) -> None:
        #: Fallback name -> version (Cargo.lock) for a proc macro whose build we missed.
        self.versions = versions or {}
        self.procs: dict[int, Process] = {}
        #: Exit time of the container's first process (the build command).
        self.root_exit_ns: int | None = None
        #: Its wait status: a signal (the deadline's or a cancel's SIGKILL) means the
        #: build was cut short, so what was still running is not persistence.
        self.root_exit_status = 0
        #: Library path -> (package, version) for proc macros a cargo-started rustc built.
        self._macros: dict[str, tuple[str, str]] = {}

    def get(self, tgid: int) -> Process:
        return self.procs.setdefault(tgid, Process(tgid))

    def track(self, event: TraceEvent) -> None:
        ctx, f = event.context, event.fields
        if event.kind == "container_start":
            args = f.get("args", [])
            root = self.get(ctx.thread_group_id or 1)
            root.executable, root.argv = (args or [""])[0], _capped(args)
            root.start_ns = ctx.time_ns
        elif event.kind == "clone" and f.get("created_thread_group_id", 0) != ctx.thread_group_id:
            parent = self.get(ctx.thread_group_id)
            child = Process(
                tgid=f.get("created_thread_group_id", 0),
                parent=parent.tgid,
                parent_proc=parent,
                parent_exe=parent.executable,
                executable=parent.executable,
                argv=list(parent.argv),
                start_ns=ctx.time_ns,
            )
            self.procs[child.tgid] = child  # a reused pid starts a new process
        elif event.kind == "exec":
            self._exec(self.get(ctx.thread_group_id), f)
        elif event.kind == "task_exit":
            proc = self.get(ctx.thread_group_id)
            proc.exit_ns = max(proc.exit_ns or 0, ctx.time_ns)
            if ctx.thread_group_id == 1 and ctx.thread_id == 1 and self.root_exit_ns is None:
                self.root_exit_ns = ctx.time_ns
                self.root_exit_status = int(f.get("exit_status", 0))
        elif event.kind == "open" and not event.errno:
            self._open(self.get(ctx.thread_group_id), str(f.get("pathname", "")), ctx.time_ns)

    def _exec(self, proc: Process, f: dict) -> None:
        proc.executable, proc.argv = f.get("binary_path", ""), _capped(f.get("argv", []))
        if proc.cargo_env is not None:
            return  # only the exec cargo made names the step
        env = f.get("env", [])
        proc.cargo_env = dict(v.split("=", 1) for v in env if v.startswith(_CARGO_VARS))
        proc.first_exe = proc.executable
        if _basename(proc.executable) != "rustc" or self.step_of(proc.tgid) is not proc:
            return  # not a rustc cargo started: its arguments and environment prove nothing
        argv = f.get("argv", [])
        proc.externs = _externs(argv)
        if "proc-macro" in argv:
            self._remember_macro(proc, argv)

    def _remember_macro(self, proc: Process, argv: list[str]) -> None:
        env = proc.cargo_env or {}
        crate, out_dir = _flag(argv, "--crate-name"), _flag(argv, "--out-dir")
        extra = next((a.split("=", 1)[1] for a in argv if a.startswith("extra-filename=")), "")
        if crate and out_dir and env.get("CARGO_PKG_NAME"):
            library = lexical(f"{out_dir}/lib{crate}{extra}.so")
            self._macros[library] = (env["CARGO_PKG_NAME"], env.get("CARGO_PKG_VERSION", ""))

    def _open(self, proc: Process, path: str, time_ns: int) -> None:
        """A rustc step opening a library cargo passed it with --extern: a macro load."""
        library = lexical(path)
        # Only a dylib is loaded as code: the .rlib/.rmeta of an ordinary dependency
        # (also an --extern) is data to rustc, and must not make its crate a suspect.
        if not library.endswith(".so"):
            return
        if library not in proc.externs.values() or self.step_of(proc.tgid) is not proc:
            return
        if all(loaded != library for _, loaded in proc.loaded):
            proc.loaded.append((time_ns, library))

    def step_of(self, tgid: int) -> Process | None:
        """The outermost process whose parent was cargo when it was cloned."""
        chain: list[Process] = []
        proc: Process | None = self.procs.get(tgid)
        while proc is not None:  # parents are made before children: no cycle
            chain.append(proc)
            proc = proc.parent_proc
        for candidate in reversed(chain):  # from the root down
            if _basename(candidate.parent_exe) == "cargo":
                return candidate
        return None

    def attribute(self, tgid: int, time_ns: int) -> Attribution:
        step = self.step_of(tgid)
        if step is None:
            return Attribution()
        env = step.cargo_env or {}
        if m := BUILD_SCRIPT.search(step.first_exe):
            # The path cargo chose names the package; its environment only the version.
            package = m.group("pkg")
            version = self.versions.get(package) or env.get("CARGO_PKG_VERSION")
            return Attribution(package, version, "build script")
        package, version = env.get("CARGO_PKG_NAME"), env.get("CARGO_PKG_VERSION")
        if _basename(step.first_exe) != "rustc":
            return Attribution(package, version, "other")
        loaded = [self._macro(step, path) for t, path in step.loaded if t <= time_ns]
        if loaded:
            macro, macro_version = loaded[-1]
            suspects = tuple(sorted({name for name, _ in loaded}))
            return Attribution(macro, macro_version, "proc macro", package, suspects)
        return Attribution(package, version, "rustc", compiling=package)

    def _macro(self, step: Process, library: str) -> tuple[str, str | None]:
        """The package of a macro library: the cargo-started rustc that wrote it, or
        (its compilation unseen) the name cargo gave it in the step's --extern."""
        if library in self._macros:
            return self._macros[library]
        name = next(n for n, p in step.externs.items() if p == library)
        for candidate in (name, name.replace("_", "-")):
            if candidate in self.versions:
                return candidate, self.versions[candidate]
        return name.replace("_", "-"), None

    def survivors(self) -> list[Process]:
        """Processes still alive when the build command exited, topmost only (a
        surviving child of a survivor is the same persistence attempt)."""
        if self.root_exit_ns is None or self.root_exit_status & 0x7F:
            return []  # still running, or killed: nothing outlived a finished build
        end = self.root_exit_ns
        alive = {
            p.tgid
            for p in self.procs.values()
            if p.parent is not None  # its clone was seen: a real child of the build
            and p.start_ns < end
            and (p.exit_ns is None or p.exit_ns > end)
        }
        return [self.procs[t] for t in sorted(alive) if self.procs[t].parent not in alive]


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


def _capped(argv: list[str]) -> list[str]:
    # Kept as evidence only (attribution reads the exec's own arguments, once).
    return [arg[:ARGV_CHARS] for arg in argv[:ARGV_ITEMS]]


def _flag(argv: list[str], name: str) -> str:
    """The value after ``name`` (``--crate-name x``), else ""."""
    for i, word in enumerate(argv[:-1]):
        if word == name:
            return argv[i + 1]
    return ""

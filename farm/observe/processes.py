"""The sandbox's process tree as gVisor recorded it, and which cargo step each process
belongs to.

Callers: ``farm.observe.classify`` feeds every event through :meth:`ProcessTable.track`
in time order and asks :meth:`ProcessTable.attribute` who made an action. Everything
comes from gVisor's ``clone``/``exec``/``task_exit``/``open`` events, never from the
build's output.

Attribution rule (docs/observer.md): a *step* is a process whose parent was the
build's cargo when it was cloned. Cargo sets ``CARGO_PKG_NAME``/``CARGO_PKG_VERSION``
in the environment of every rustc and build script it starts, and gVisor's exec event
carries that environment, so the step's first exec names the package. A process
belongs to its *outermost* step: whatever a build script starts, even another cargo
with a forged environment, is still that build script's doing. A rustc step that
loaded a proc macro (opened ``deps/lib<crate>-<hash>.so``) is attributed to that
proc macro from then on, together with the crate being compiled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from farm.observe.events import TraceEvent

BUILD_SCRIPT = re.compile(r"/build/(?P<pkg>[^/]+)-(?P<hash>[0-9a-f]{16})/build-script-build$")
PROC_MACRO_LIB = re.compile(r"/deps/lib(?P<crate>\w+?)(?P<extra>-[0-9a-f]+)?\.so$")


@dataclass(frozen=True)
class Attribution:
    """Who made an action: the cargo package and its role, when a step is known."""

    package: str | None = None
    version: str | None = None
    #: "build script", "proc macro", "rustc" or "other".
    role: str = "other"
    #: For rustc and proc macros: the package rustc was compiling.
    compiling: str | None = None


@dataclass
class Process:
    tgid: int
    parent: int | None = None
    #: The parent's executable when it cloned this process.
    parent_exe: str = ""
    executable: str = ""
    argv: list[str] = field(default_factory=list)
    #: CARGO_PKG_NAME / CARGO_PKG_VERSION / CARGO_CRATE_NAME of the first exec.
    cargo_env: dict[str, str] | None = None
    first_exe: str = ""
    start_ns: int = 0
    exit_ns: int | None = None
    #: (time, .so path) of each proc-macro library this process opened.
    loaded: list[tuple[int, str]] = field(default_factory=list)


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
        #: "lib<crate><extra>.so" -> (package, version) for proc macros rustc built.
        self._macros: dict[str, tuple[str, str]] = {}

    def get(self, tgid: int) -> Process:
        return self.procs.setdefault(tgid, Process(tgid))

    def track(self, event: TraceEvent) -> None:
        ctx, f = event.context, event.fields
        if event.kind == "container_start":
            args = f.get("args", [])
            root = self.get(ctx.thread_group_id or 1)
            root.executable, root.argv, root.start_ns = (args or [""])[0], args, ctx.time_ns
        elif event.kind == "clone" and f.get("created_thread_group_id", 0) != ctx.thread_group_id:
            parent = self.get(ctx.thread_group_id)
            child = Process(
                tgid=f.get("created_thread_group_id", 0),
                parent=parent.tgid,
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
        elif event.kind == "open" and not event.errno:
            path = str(f.get("pathname", ""))
            if PROC_MACRO_LIB.search(path) and self._is_rustc(ctx.thread_group_id):
                self.get(ctx.thread_group_id).loaded.append((ctx.time_ns, path))

    def _exec(self, proc: Process, f: dict) -> None:
        proc.executable, proc.argv = f.get("binary_path", ""), f.get("argv", [])
        if proc.cargo_env is not None:
            return  # only the exec cargo made names the step
        env = f.get("env", [])
        proc.cargo_env = dict(v.split("=", 1) for v in env if v.startswith(_CARGO_VARS))
        proc.first_exe = proc.executable
        if _basename(proc.executable) == "rustc" and "proc-macro" in proc.argv:
            self._remember_macro(proc)

    def _remember_macro(self, proc: Process) -> None:
        argv, env = proc.argv, proc.cargo_env or {}
        crate = _flag(argv, "--crate-name")
        extra = next((a.split("=", 1)[1] for a in argv if a.startswith("extra-filename=")), "")
        if crate and env.get("CARGO_PKG_NAME"):
            key = f"lib{crate}{extra}.so"
            self._macros[key] = (env["CARGO_PKG_NAME"], env.get("CARGO_PKG_VERSION", ""))

    def _is_rustc(self, tgid: int) -> bool:
        return _basename(self.get(tgid).executable) == "rustc"

    def step_of(self, tgid: int) -> Process | None:
        """The outermost process whose parent was cargo when it was cloned."""
        chain, seen = [], set()
        proc: Process | None = self.procs.get(tgid)
        while proc is not None and proc.tgid not in seen:
            seen.add(proc.tgid)
            chain.append(proc)
            proc = self.procs.get(proc.parent) if proc.parent is not None else None
        for candidate in reversed(chain):  # from the root down
            if _basename(candidate.parent_exe) == "cargo":
                return candidate
        return None

    def attribute(self, tgid: int, time_ns: int) -> Attribution:
        step = self.step_of(tgid)
        if step is None:
            return Attribution()
        env = step.cargo_env or {}
        package, version = env.get("CARGO_PKG_NAME"), env.get("CARGO_PKG_VERSION")
        if m := BUILD_SCRIPT.search(step.first_exe):
            return Attribution(package or m.group("pkg"), version, "build script")
        if _basename(step.first_exe) != "rustc":
            return Attribution(package, version, "other")
        loaded = [path for t, path in step.loaded if t <= time_ns]
        if loaded:
            macro, macro_version = self._macro(loaded[-1])
            return Attribution(macro, macro_version, "proc macro", compiling=package)
        return Attribution(package, version, "rustc", compiling=package)

    def _macro(self, path: str) -> tuple[str, str | None]:
        name = _basename(path)
        if name in self._macros:
            return self._macros[name]
        m = PROC_MACRO_LIB.search(path)
        crate = m.group("crate") if m else name
        for candidate in (crate, crate.replace("_", "-")):
            if candidate in self.versions:
                return candidate, self.versions[candidate]
        return crate.replace("_", "-"), None

    def survivors(self) -> list[Process]:
        """Processes still alive when the build command exited, topmost only (a
        surviving child of a survivor is the same persistence attempt)."""
        if self.root_exit_ns is None:
            return []
        end = self.root_exit_ns
        alive = {
            p.tgid
            for p in self.procs.values()
            if p.parent is not None  # its clone was seen: a real child of the build
            and p.start_ns < end
            and (p.exit_ns is None or p.exit_ns > end)
        }
        return [self.procs[t] for t in sorted(alive) if self.procs[t].parent not in alive]


def _flag(argv: list[str], name: str) -> str:
    """The value after ``name`` (``--crate-name x``), else ""."""
    for i, word in enumerate(argv[:-1]):
        if word == name:
            return argv[i + 1]
    return ""

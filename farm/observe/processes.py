"""The sandbox's process tree as gVisor recorded it, and which build step each process
belongs to.

Callers: ``farm.observe.classify`` and ``farm.profiles.derive`` feed every event through
:meth:`ProcessTable.track` in time order and ask :meth:`ProcessTable.attribute` who made
an action. Everything comes from gVisor's ``clone``/``exec``/``task_exit``/``open``
events, never from the build's output.

This module knows processes only: pids, clones, execs, exits. Who a process works for is
an ecosystem's ``Attributor`` (farm.ecosystems; cargo's rules are in
``farm.ecosystems.cargo.attribution``), which the table asks without naming it:

- A *step* is the outermost process cloned by a *driver* (an executable an attributor
  claims: cargo). Whatever a step starts (another driver, a process with a forged
  environment) is that step's doing.
- The attributor notes what it needs at each process's first exec (the one its parent
  made) and at each successful open, and names the step's package from those facts.

Attribution rule (docs/observer.md, "Attribution"): only facts the build cannot
forge name a package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from farm.observe.events import TraceEvent

if TYPE_CHECKING:
    from collections.abc import Sequence

#: A build controls its processes' argv and cwd; in an action they are evidence, never
#: matched by allow rules, so a process and an action keep this much of them
#: (farm.observe.verdict caps how many actions a record lists).
ARGV_ITEMS, ARGV_CHARS = 32, 256


@dataclass(frozen=True)
class Attribution:
    """Who made an action: the package and its role, when a step is known."""

    package: str | None = None
    version: str | None = None
    #: "build script", "proc macro", "rustc" or "other" (an ecosystem's role names).
    role: str = "other"
    #: For compiler steps: the package being compiled.
    compiling: str | None = None
    #: Every package whose code may have made the call (cargo: the proc macros loaded).
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
    #: Whether the process has exec'd since its clone: only that first exec was made by
    #: its parent (a driver), so only it names the step.
    execed: bool = False
    first_exe: str = ""
    start_ns: int = 0
    exit_ns: int | None = None
    #: What each attributor noted about this process, by its name (its own types).
    facts: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class Attributor(Protocol):
    """One ecosystem's rules for naming the package a process works for. Implementations
    keep what they learn about a process in ``process.facts[name]``."""

    name: str

    def is_driver(self, executable: str) -> bool:
        """Whether a process running ``executable`` starts this ecosystem's steps."""

    def first_exec(self, proc: Process, fields: dict, table: ProcessTable) -> None:
        """``proc``'s first exec (``fields``: gVisor's exec event, uncapped argv, env)."""

    def opened(self, proc: Process, path: str, time_ns: int, table: ProcessTable) -> None:
        """A successful open of ``path`` (as spelled) by ``proc``."""

    def attribute(self, step: Process, time_ns: int) -> Attribution:
        """Who ``step`` (a process this attributor's driver cloned) is at ``time_ns``."""


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class ProcessTable:
    def __init__(
        self,
        versions: dict[str, str] | None = None,
        attributors: Sequence[Attributor] | None = None,
    ) -> None:
        #: Fallback name -> version (the lockfile's) for a package whose step we missed.
        self.versions = versions or {}
        if attributors is None:
            from farm.ecosystems import attributors as every

            attributors = every(self.versions)
        self.attributors = list(attributors)
        self.procs: dict[int, Process] = {}
        #: Exit time of the container's first process (the build command).
        self.root_exit_ns: int | None = None
        #: Its wait status: a signal (the deadline's or a cancel's SIGKILL) means the
        #: build was cut short, so what was still running is not persistence.
        self.root_exit_status = 0

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
            proc, path = self.get(ctx.thread_group_id), str(f.get("pathname", ""))
            for attributor in self.attributors:
                attributor.opened(proc, path, ctx.time_ns, self)

    def _exec(self, proc: Process, f: dict) -> None:
        proc.executable, proc.argv = f.get("binary_path", ""), _capped(f.get("argv", []))
        if proc.execed:
            return  # only the exec the driver made names the step
        proc.execed, proc.first_exe = True, proc.executable
        for attributor in self.attributors:
            attributor.first_exec(proc, f, self)

    def _driver(self, executable: str) -> Attributor | None:
        return next((a for a in self.attributors if a.is_driver(executable)), None)

    def step_of(self, tgid: int) -> Process | None:
        """The outermost process whose parent was a driver when it was cloned."""
        chain: list[Process] = []
        proc: Process | None = self.procs.get(tgid)
        while proc is not None:  # parents are made before children: no cycle
            chain.append(proc)
            proc = proc.parent_proc
        for candidate in reversed(chain):  # from the root down
            if self._driver(candidate.parent_exe) is not None:
                return candidate
        return None

    def attribute(self, tgid: int, time_ns: int) -> Attribution:
        step = self.step_of(tgid)
        attributor = self._driver(step.parent_exe) if step is not None else None
        if step is None or attributor is None:
            return Attribution()
        return attributor.attribute(step, time_ns)

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


def _capped(argv: list[str]) -> list[str]:
    # Kept as evidence only (attribution reads the exec's own arguments, once).
    return [arg[:ARGV_CHARS] for arg in argv[:ARGV_ITEMS]]

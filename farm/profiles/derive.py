"""Build the behaviour profile of every package version from one observed build.

Callers: ``farm.runner`` wraps the trace stream with :meth:`ProfileBuilder.watch`
(execs and opens, attributed with a process table of its own) and the classifier's
actions with :meth:`ProfileBuilder.actions` (network, privilege, survivors), so the
record is still read once; then it takes :meth:`ProfileBuilder.profiles`. Unit tests
feed recorded events directly.

Only code a package ships is profiled: its build script (and what that starts) and its
proc macro (code running inside rustc). rustc compiling a package is the toolchain's
behaviour, not the package's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from farm.observe.classify import O_ACCMODE, O_APPEND, O_CREAT, O_TRUNC, BlockedAction, _path
from farm.observe.events import TraceEvent
from farm.observe.paths import Where, canonical
from farm.observe.processes import Attribution, ProcessTable
from farm.policy import TARGET
from farm.profiles.model import ASPECTS, MAX_ENTRIES, MAX_ENTRY_CHARS, Profile
from farm.profiles.normalise import IGNORED, SOURCES, normalise, under

PROFILED_ROLES = frozenset({"build script", "proc macro", "other"})
#: Packages profiled per build (a workspace of thousands of crates is cut here).
MAX_PACKAGES = 4096
#: Entries kept over all packages of one build: memory stays bounded (about 64 MiB at
#: most) however many packages and paths a hostile build makes up.
MAX_BUILD_ENTRIES = 131072
#: Where rustc (running a proc macro) writes its own outputs.
_RUSTC_OUTPUTS = re.compile(r"^" + re.escape(TARGET) + r"/.*/(deps|incremental|\.fingerprint)/")


@dataclass
class _Budget:
    left: int = field(default_factory=lambda: MAX_BUILD_ENTRIES)


@dataclass
class _Draft:
    budget: _Budget
    roles: set[str] = field(default_factory=set)
    aspects: dict[str, set[str]] = field(default_factory=lambda: {a: set() for a in ASPECTS})
    truncated: set[str] = field(default_factory=set)

    def add(self, aspect: str, entry: str) -> None:
        entry, kept = entry[:MAX_ENTRY_CHARS], self.aspects[aspect]
        if entry in kept:
            return
        if len(kept) >= MAX_ENTRIES or self.budget.left <= 0:
            self.truncated.add(aspect)
            return
        self.budget.left -= 1
        kept.add(entry)


class ProfileBuilder:
    """Accumulates profiles while the runner streams one build's record."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.table = ProcessTable(versions)
        self.drafts: dict[tuple[str, str], _Draft] = {}
        self.budget = _Budget()

    def watch(self, events: Iterable[TraceEvent]) -> Iterator[TraceEvent]:
        """``events`` unchanged, each noted on the way (they arrive in time order)."""
        for event in events:
            self.table.track(event)
            if event.kind == "exec":
                self._exec(event)
            elif event.kind == "open":
                self._open(event)
            yield event

    def actions(self, actions: Iterable[BlockedAction]) -> Iterator[BlockedAction]:
        """``actions`` unchanged, each of them noted."""
        for action in actions:
            self.note_action(action)
            yield action

    def note_action(self, action: BlockedAction) -> None:
        who = Attribution(action.package, action.version, action.role)
        draft = self._draft(who)
        if draft is None:
            return
        if action.kind == "network":
            draft.add("network", _network_entry(action))
        elif action.kind == "privilege":
            draft.add("privilege", f"{action.operation} {normalise(action.target)}".strip())
        elif action.kind == "persistence":
            draft.add("survivors", normalise(action.executable or action.process_name))
        elif action.kind == "sensitive_read" and action.target:
            draft.add("reads", normalise(action.target))

    def profiles(self) -> list[Profile]:
        return sorted(
            (
                Profile(
                    package=package,
                    version=version,
                    roles=sorted(d.roles),
                    truncated=sorted(d.truncated),
                    **{a: sorted(d.aspects[a]) for a in ASPECTS},
                )
                for (package, version), d in self.drafts.items()
            ),
            key=Profile.key,
        )

    def _draft(self, who: Attribution) -> _Draft | None:
        if not who.package or who.role not in PROFILED_ROLES:
            return None
        key = (who.package, who.version or "?")
        if key not in self.drafts and len(self.drafts) >= MAX_PACKAGES:
            return None
        draft = self.drafts.setdefault(key, _Draft(self.budget))
        draft.roles.add(who.role)
        return draft

    def _who(self, event: TraceEvent) -> Attribution:
        return self.table.attribute(event.context.thread_group_id, event.context.time_ns)

    def _exec(self, event: TraceEvent) -> None:
        draft = self._draft(self._who(event))
        binary = str(event.fields.get("binary_path", ""))
        if draft is not None and binary:
            draft.add("executables", normalise(binary))

    def _open(self, event: TraceEvent) -> None:
        who = self._who(event)
        draft = self._draft(who)
        if draft is None:
            return
        ctx = event.context
        path = canonical(_path(event), Where(ctx.thread_group_id, ctx.cwd or "/", {}))
        if not path.startswith("/") or path in IGNORED or path.startswith("/proc/self/fd"):
            return
        flags = int(event.fields.get("flags", 0))
        if (flags & O_ACCMODE) or flags & (O_CREAT | O_TRUNC | O_APPEND):
            if not _expected_write(path, who):
                draft.add("writes", normalise(path))
        elif not under(path, SOURCES):
            draft.add("reads", normalise(path))


def _expected_write(path: str, who: Attribution) -> bool:
    """A build script's writes in its own build directory (OUT_DIR), and rustc's writes
    of its outputs while it runs a proc macro."""
    package = re.escape(who.package or "")
    own = re.compile(re.escape(TARGET) + r"/.*build/" + package + r"-[0-9a-f]{16}/")
    return bool(own.match(path) or _RUSTC_OUTPUTS.match(path)) or path.startswith("/dev/pts/")


def _network_entry(action: BlockedAction) -> str:
    """``connect 10.0.0.1:443/tcp``; with a resolved name (the sinkhole resolver's
    ``name``, when present) the name stands for its per-build address."""
    name = getattr(action, "name", None)
    proto = f"/{action.protocol}" if action.protocol and action.port is not None else ""
    if name:
        port = f":{action.port}" if action.port is not None else ""
        return f"{action.operation} {name}{port}{proto}".strip()
    return f"{action.operation} {normalise(action.target)}{proto}".strip()

"""Apply a build's observe policy to its blocked actions: which are allowed, and whether
the build is quarantined; and cap how many of them a record lists.

Callers: ``farm.runner`` after classification, and ``farm.k8s.reconcile`` with the node
monitor's record of a cluster build. Both go through :func:`judge`, so a local build,
``farm serve`` and the Kubernetes controller reach the same verdict for the same record.
``farm.k8s.nodemonitor`` lists a cluster build's actions with the same :class:`Tally`.

Actions arrive as a stream (``classify.iter_actions``): a hostile build can make
millions, so every one is judged and counted, and only the first
:data:`MAX_LISTED_ACTIONS` (refused ones first) are kept to be listed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from farm.observe.classify import ARGV_CHARS, ARGV_ITEMS, BlockedAction
from farm.records import BuildRecord, ObservationSummary, Status, TraceCompleteness
from farm.spec import AllowRule, ObservePolicy

#: Actions a record lists, and the JSON bytes they may take; the rest are counted in
#: ``unlisted``. One cap for a local record and a Build's status (farm.k8s.resource).
MAX_LISTED_ACTIONS = 256
MAX_LISTED_BYTES = 256 << 10
#: Names a quarantine reason spells out; the rest are counted ("and 12 more").
MAX_NAMED = 20


def matches(rule: AllowRule, action: BlockedAction) -> bool:
    """True if every field the rule sets matches the action's field of the same name
    (globs; an action's unknown package or version matches as "").

    A proc macro's action may be by any macro its rustc had loaded (``suspects``):
    a ``package`` pattern must then match every one of them, so loading another
    crate's macro library cannot borrow that crate's allow rule.
    """
    wanted = rule.model_dump(exclude_none=True)
    suspects = action.suspects if "package" in wanted else []
    if not all(fnmatchcase(s, wanted["package"]) for s in suspects):
        return False
    return all(
        fnmatchcase(getattr(action, name) or "", pattern) for name, pattern in wanted.items()
    )


def apply_allow(actions: Iterable[BlockedAction], policy: ObservePolicy) -> list[BlockedAction]:
    """The actions, each with ``allowed`` set if some rule of the policy matches it."""
    return [_allow(a, policy) for a in actions]


def _allow(action: BlockedAction, policy: ObservePolicy) -> BlockedAction:
    allowed = any(matches(r, action) for r in policy.allow)
    return action.model_copy(update={"allowed": allowed}) if allowed != action.allowed else action


def tally(actions: Iterable[BlockedAction], policy: ObservePolicy) -> Tally:
    """Judge every action of a stream by ``policy`` and count it (see :class:`Tally`)."""
    return Tally().add_all(_allow(a, policy) for a in actions)


def slim(action: BlockedAction) -> BlockedAction:
    """The action with argv and cwd shortened; allow rules never match those fields."""
    short = len(action.argv) <= ARGV_ITEMS and len(action.cwd) <= ARGV_CHARS
    if short and all(len(arg) <= ARGV_CHARS for arg in action.argv):
        return action
    argv = [arg[:ARGV_CHARS] for arg in action.argv[:ARGV_ITEMS]]
    return action.model_copy(update={"argv": argv, "cwd": action.cwd[:ARGV_CHARS]})


@dataclass
class Tally:
    """Every action of one record counted, the first ones kept to be listed.

    Refused actions are kept before allowed ones, so a flood of allowed actions cannot
    push the evidence for a quarantine out of the listing. Memory is bounded by the
    caps, however many actions are added.
    """

    max_actions: int = MAX_LISTED_ACTIONS
    max_bytes: int = MAX_LISTED_BYTES
    total: int = 0
    allowed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    refused_by_kind: Counter[str] = field(default_factory=Counter)
    #: Who made the refused actions (bounded: see ``refused_by``).
    refusers: Counter[str] = field(default_factory=Counter)
    _kept: dict[bool, list[BlockedAction]] = field(default_factory=lambda: {False: [], True: []})

    def add(self, action: BlockedAction) -> None:
        self.total += 1
        self.allowed += action.allowed
        self.by_kind[action.kind] += 1
        if not action.allowed:
            self.refused_by_kind[action.kind] += 1
            who = action.package or action.executable or "?"
            if who in self.refusers or len(self.refusers) < MAX_NAMED:
                self.refusers[who] += 1
            else:
                self.refusers[""] += 1  # someone not named
        kept = self._kept[action.allowed]
        if len(kept) < self.max_actions:
            kept.append(slim(action))

    def add_all(self, actions: Iterable[BlockedAction]) -> Tally:
        for action in actions:
            self.add(action)
        return self

    @property
    def refused(self) -> int:
        return self.total - self.allowed

    def listed(self) -> list[BlockedAction]:
        """The actions a record lists: refused first, within both caps, in time order."""
        listed, size = [], 2
        for action in self._kept[False] + self._kept[True]:
            size += len(action.model_dump_json()) + 1
            if len(listed) >= self.max_actions or size > self.max_bytes:
                break
            listed.append(action)
        return sorted(listed, key=lambda a: a.time_ns)

    def refused_by(self) -> str:
        named = sorted(w for w in self.refusers if w)
        more = self.refusers[""]
        return ", ".join(named) + (f" and {more} more actions by others" if more else "")


def quarantine_reasons(
    actions: Iterable[BlockedAction] | Tally,
    seen: TraceCompleteness,
    policy: ObservePolicy,
    *,
    unlisted: int = 0,
) -> list[str]:
    """Why enforce mode withholds the build's artifacts; [] in audit mode or if clean.

    An incomplete or lossy record quarantines too: it cannot vouch for the build.
    ``unlisted`` is how many of the refused actions the record does not list.
    """
    if policy.mode != "enforce":
        return []
    tally = actions if isinstance(actions, Tally) else Tally().add_all(actions)
    reasons = []
    if tally.refused:
        reason = f"{tally.refused} blocked actions not allowed by policy (by {tally.refused_by()})"
        if unlisted:
            reason += f"; {unlisted} actions are not listed in this record (over its cap)"
        reasons.append(reason)
    if not seen.complete:
        reasons.append(f"gVisor's record is incomplete: {seen.problem}")
    if seen.lost:
        reasons.append(f"{seen.lost} of gVisor's events were lost (dropped or undecodable)")
    return reasons


def summarize(
    seen: TraceCompleteness,
    events: int,
    actions: Iterable[BlockedAction] | Tally,
    policy: ObservePolicy,
    *,
    unlisted: int = 0,
) -> ObservationSummary:
    """The build record's summary of its observation, with enforce mode's verdict.
    ``events`` is how many events the record held (the node monitor ships the count,
    not the events); ``unlisted`` how many actions were left out before these."""
    tally = actions if isinstance(actions, Tally) else Tally().add_all(actions)
    left_out = unlisted + tally.total - len(tally.listed())
    return ObservationSummary(
        mode=policy.mode,
        events=events,
        **seen.completeness(),
        actions=tally.total + unlisted,
        allowed=tally.allowed,
        unlisted=left_out,
        by_kind=dict(tally.by_kind),
        refused_by_kind=dict(tally.refused_by_kind),
        quarantine_reasons=quarantine_reasons(tally, seen, policy, unlisted=left_out),
    )


def judge(
    record: BuildRecord,
    seen: TraceCompleteness,
    events: int,
    actions: Iterable[BlockedAction] | Tally,
    policy: ObservePolicy,
    *,
    unlisted: int = 0,
) -> None:
    """Put the observation on ``record`` and quarantine it if ``policy`` says so.

    ``actions`` may be a stream, or its :func:`tally` when the completeness is known
    only once the stream is read: every action is judged, the record lists the first
    :data:`MAX_LISTED_ACTIONS` (refused first) and counts the rest in
    ``observation.unlisted``. ``unlisted`` are actions already left out upstream (a
    cluster build's status lists a capped number; its record is incomplete for it).

    ``record.status`` is the build's own result (succeeded or failed). A build that
    would publish is held back by any reason; a failed one ships nothing anyway, so only
    what its dependencies tried marks it quarantined. A quarantined record lists no
    artifacts: they are withheld.
    """
    counted = actions if isinstance(actions, Tally) else tally(actions, policy)
    record.blocked_actions = [a.model_dump() for a in counted.listed()]
    record.observation = summarize(seen, events, counted, policy, unlisted=unlisted)
    unlisted = record.observation.unlisted
    record.notes.append(
        f"observed {events} gVisor events ({seen.dropped} dropped by gVisor, "
        f"{seen.unparseable + seen.overflow} undecodable or over the cap); "
        f"{record.observation.actions} blocked or suspicious actions"
        + (f", {unlisted} of them not listed" if unlisted else "")
    )
    if not seen.complete:
        record.notes.append(f"observation incomplete: {seen.problem}")
    reasons = record.observation.quarantine_reasons
    if reasons and (
        record.status is Status.SUCCEEDED or (record.status is Status.FAILED and counted.refused)
    ):
        record.status, record.artifacts = Status.QUARANTINED, []
        record.notes += [f"quarantined (enforce mode): {r}" for r in reasons]
        record.notes.append(f"artifacts withheld; see `farm report {record.id}`")

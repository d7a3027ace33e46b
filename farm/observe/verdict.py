"""Apply a build's observe policy to its blocked actions: which are allowed, and whether
the build is quarantined.

Callers: ``farm.runner`` after classification, and ``farm.k8s.reconcile`` with the node
monitor's record of a cluster build. Both go through :func:`judge`, so a local build,
``farm serve`` and the Kubernetes controller reach the same verdict for the same record.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from farm.observe.classify import BlockedAction
from farm.records import BuildRecord, ObservationSummary, Status, TraceCompleteness
from farm.spec import AllowRule, ObservePolicy


def matches(rule: AllowRule, action: BlockedAction) -> bool:
    """True if every field the rule sets matches the action's field of the same name
    (globs; an action's unknown package or version matches as "")."""
    wanted = rule.model_dump(exclude_none=True)
    return all(
        fnmatchcase(getattr(action, name) or "", pattern) for name, pattern in wanted.items()
    )


def apply_allow(actions: list[BlockedAction], policy: ObservePolicy) -> list[BlockedAction]:
    """The actions, each with ``allowed`` set if some rule of the policy matches it."""
    return [
        a.model_copy(update={"allowed": any(matches(r, a) for r in policy.allow)}) for a in actions
    ]


def quarantine_reasons(
    actions: list[BlockedAction], seen: TraceCompleteness, policy: ObservePolicy
) -> list[str]:
    """Why enforce mode withholds the build's artifacts; [] in audit mode or if clean.

    An incomplete or lossy record quarantines too: it cannot vouch for the build.
    """
    if policy.mode != "enforce":
        return []
    reasons = []
    refused = [a for a in actions if not a.allowed]
    if refused:
        packages = sorted({a.package or a.executable or "?" for a in refused})
        reasons.append(
            f"{len(refused)} blocked actions not allowed by policy (by {', '.join(packages)})"
        )
    if not seen.complete:
        reasons.append(f"gVisor's record is incomplete: {seen.problem}")
    if seen.lost:
        reasons.append(f"{seen.lost} of gVisor's events were lost (dropped or undecodable)")
    return reasons


def summarize(
    seen: TraceCompleteness, events: int, actions: list[BlockedAction], policy: ObservePolicy
) -> ObservationSummary:
    """The build record's summary of its observation, with enforce mode's verdict.
    ``events`` is how many events the record held (the node monitor ships the count,
    not the events)."""
    return ObservationSummary(
        mode=policy.mode,
        events=events,
        **seen.completeness(),
        actions=len(actions),
        allowed=sum(a.allowed for a in actions),
        quarantine_reasons=quarantine_reasons(actions, seen, policy),
    )


def judge(
    record: BuildRecord,
    seen: TraceCompleteness,
    events: int,
    actions: list[BlockedAction],
    policy: ObservePolicy,
) -> None:
    """Put the observation on ``record`` and quarantine it if ``policy`` says so.

    ``record.status`` is the build's own result (succeeded or failed). A build that
    would publish is held back by any reason; a failed one ships nothing anyway, so only
    what its dependencies tried marks it quarantined. A quarantined record lists no
    artifacts: they are withheld.
    """
    actions = apply_allow(actions, policy)
    record.blocked_actions = [a.model_dump() for a in actions]
    record.observation = summarize(seen, events, actions, policy)
    record.notes.append(
        f"observed {events} gVisor events ({seen.dropped} dropped by gVisor, "
        f"{seen.unparseable + seen.overflow} undecodable or over the cap); "
        f"{len(actions)} blocked or suspicious actions"
    )
    if not seen.complete:
        record.notes.append(f"observation incomplete: {seen.problem}")
    reasons = record.observation.quarantine_reasons
    tried = any(not a.allowed for a in actions)
    if reasons and (
        record.status is Status.SUCCEEDED or (record.status is Status.FAILED and tried)
    ):
        record.status, record.artifacts = Status.QUARANTINED, []
        record.notes += [f"quarantined (enforce mode): {r}" for r in reasons]
        record.notes.append(f"artifacts withheld; see `farm report {record.id}`")

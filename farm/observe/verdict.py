"""Apply a build's observe policy to its blocked actions: which are allowed, and whether
the build is quarantined.

Callers: ``farm.runner`` after classification. Pure functions over pydantic models, so
``farm serve`` and the Kubernetes controller reach the same verdict for the same record.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from farm.observe.classify import BlockedAction
from farm.observe.spool import Observation
from farm.records import ObservationSummary
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
    actions: list[BlockedAction], seen: Observation, policy: ObservePolicy
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
    seen: Observation, actions: list[BlockedAction], policy: ObservePolicy
) -> ObservationSummary:
    """The build record's summary of its observation, with enforce mode's verdict."""
    return ObservationSummary(
        mode=policy.mode,
        events=len(seen.events),
        **seen.completeness(),
        actions=len(actions),
        allowed=sum(a.allowed for a in actions),
        quarantine_reasons=quarantine_reasons(actions, seen, policy),
    )

"""Put a build's behaviour changes on its record, and quarantine on them if asked.

Callers: ``farm.runner`` after the observation's verdict (farm.observe.verdict.judge).
Each package version the build profiled is compared with the package's last known
profile in the same tenant (an earlier build, usually of its previous version); any new
behaviour is a ``behaviour_changed`` note. ``observe.quarantine_on_behaviour_change``
(farm.spec.ObservePolicy) quarantines the build in enforce mode on a change at least
that serious, even when every single action was allowed.
"""

from __future__ import annotations

from farm.profiles.diff import changes
from farm.profiles.model import BehaviourChange, Profile, rank
from farm.profiles.store import ProfileStore
from farm.records import BuildRecord, Status
from farm.spec import ObservePolicy


def behaviour_changes(
    record: BuildRecord, profiles: list[Profile], store: ProfileStore
) -> list[BehaviourChange]:
    found = []
    for profile in profiles:
        last = store.last_known(record.tenant, profile.package, before_build=record.id)
        if last is None:
            continue  # first sight of the package: nothing to compare with
        base_build, base = last
        added = [c for c in changes(base, profile) if c.change == "added"]
        if added:
            found.append(
                BehaviourChange(
                    package=profile.package,
                    version=profile.version,
                    base_version=base.version,
                    base_build=base_build,
                    severity=added[0].severity,  # sorted most serious first
                    changes=added,
                )
            )
    return found


def apply(
    record: BuildRecord, profiles: list[Profile], store: ProfileStore, policy: ObservePolicy
) -> None:
    """Compare, note, maybe quarantine, then save ``profiles`` as this build's."""
    found = behaviour_changes(record, profiles, store)
    record.behaviour_changes = found
    record.notes += [c.line() for c in found]
    threshold = policy.quarantine_on_behaviour_change
    serious = [c for c in found if threshold and rank(c.severity) <= rank(threshold)]
    if serious and policy.mode == "enforce" and record.status is Status.SUCCEEDED:
        record.status, record.artifacts = Status.QUARANTINED, []
        reason = f"behaviour changed ({threshold} or worse): " + ", ".join(
            f"{c.package} {c.base_version} -> {c.version}" for c in serious
        )
        if record.observation is not None:
            record.observation.quarantine_reasons.append(reason)
        record.notes += [f"quarantined (enforce mode): {reason}"]
        record.notes.append(f"artifacts withheld; see `farm report {record.id}`")
    clean = record.status is Status.SUCCEEDED
    store.save(record.tenant, record.id, record.created_at, profiles, accepted=clean)

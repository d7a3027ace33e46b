"""Compare two behaviour profiles of a package: what is new, what is gone, how serious.

Callers: ``farm.profiles.judge`` (every observed build) and ``farm diff`` (farm.cli).
"""

from __future__ import annotations

from farm.profiles.model import ASPECTS, SEVERITY, Change, Profile, ProfileDiff, rank
from farm.profiles.normalise import entry_category

#: Aspects whose entries are not paths: their category is the aspect.
_NOT_PATHS = frozenset({"network", "privilege", "survivors"})


def categorise(aspect: str, entry: str) -> str:
    return aspect if aspect in _NOT_PATHS else entry_category(entry)


def severity(aspect: str, entry: str) -> str:
    """farm.profiles.model.SEVERITY for a new entry ("low" for pairs it does not name)."""
    return SEVERITY.get((aspect, categorise(aspect, entry)), "low")


def changes(base: Profile | None, new: Profile) -> list[Change]:
    """Entries ``new`` has that ``base`` lacks (added), and the reverse (removed);
    most serious first. With no base, every entry of ``new`` is added."""
    found = []
    for aspect in ASPECTS:
        before = set(getattr(base, aspect)) if base else set()
        after = set(getattr(new, aspect))
        for entry, kind in [(e, "added") for e in after - before] + [
            (e, "removed") for e in before - after
        ]:
            found.append(
                Change(
                    aspect=aspect,
                    entry=entry,
                    category=categorise(aspect, entry),
                    severity=severity(aspect, entry),  # type: ignore[arg-type]
                    change=kind,  # type: ignore[arg-type]
                )
            )
    return sorted(found, key=lambda c: (c.change != "added", rank(c.severity), c.aspect, c.entry))


def diff(
    base: Profile | None,
    new: Profile,
    *,
    base_builds: list[str] | None = None,
    new_builds: list[str] | None = None,
) -> ProfileDiff:
    return ProfileDiff(
        package=new.package,
        base_version=base.version if base else None,
        new_version=new.version,
        base_builds=base_builds or [],
        new_builds=new_builds or [],
        changes=changes(base, new),
    )


def render(d: ProfileDiff) -> str:
    """``farm diff``'s human output."""
    base = f"{d.package} {d.base_version}" if d.base_version else "(no earlier profile)"
    head = f"{base} -> {d.package} {d.new_version}"
    builds = f"  builds: {', '.join(d.base_builds) or '-'} -> {', '.join(d.new_builds) or '-'}"
    if not d.changes:
        return f"{head}: same behaviour\n{builds}"
    worst = d.worst()
    lines = [
        f"{head}: {len(d.added())} new, {len(d.changes) - len(d.added())} gone"
        + (f" (worst: {worst})" if worst else ""),
        builds,
    ]
    for c in d.changes:
        sign = "+" if c.change == "added" else "-"
        tag = f"[{c.severity}]" if c.change == "added" else ""
        lines.append(f"  {sign} {c.aspect:<11} {c.entry}  {tag}".rstrip())
    return "\n".join(lines)

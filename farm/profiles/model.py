"""The behaviour profile of one package version and one change between two of them.

Callers: ``farm.profiles.derive`` fills :class:`Profile`; ``farm.profiles.diff`` makes
:class:`Change`; ``farm.records.BuildRecord`` carries the changes a build showed;
``farm.report`` and ``farm diff`` print them. :data:`SEVERITY` is the one table that
says how serious each kind of new behaviour is (docs/observer.md documents it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("high", "medium", "low", "info")

#: Profile fields, each a sorted list of normalised strings.
ASPECTS = ("executables", "reads", "writes", "network", "privilege", "survivors")

#: (aspect, category) -> severity of a NEW entry. The category comes from
#: farm.profiles.normalise.category (paths) or is the aspect itself.
SEVERITY: dict[tuple[str, str], Severity] = {
    ("network", "network"): "high",
    ("reads", "sensitive"): "high",
    ("privilege", "privilege"): "high",
    ("survivors", "survivors"): "high",
    ("executables", "scratch"): "medium",
    ("writes", "scratch"): "medium",
    ("writes", "other"): "high",
    ("reads", "other"): "medium",
    ("executables", "toolchain"): "low",
    ("executables", "other"): "medium",
    ("reads", "toolchain"): "info",
    ("writes", "toolchain"): "high",
    ("writes", "sensitive"): "high",
}

#: Entries kept per aspect of one profile; past it the profile says ``truncated``.
MAX_ENTRIES = 512
#: Characters kept of one entry.
MAX_ENTRY_CHARS = 512


def rank(severity: str) -> int:
    """0 for high … 3 for info (unknown values rank last)."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


class Profile(BaseModel):
    """What one package version's own code (build script, proc macro) did in one build,
    normalised so two clean builds of the same version give the same profile."""

    model_config = ConfigDict(frozen=True)

    package: str
    version: str
    #: The roles its code ran in ("build script", "proc macro", "other").
    roles: list[str] = Field(default_factory=list)
    executables: list[str] = Field(default_factory=list)
    #: Files and directories read outside the package's sources and the build's outputs.
    reads: list[str] = Field(default_factory=list)
    #: Files written outside the package's OUT_DIR and rustc's own output dirs.
    writes: list[str] = Field(default_factory=list)
    #: ``connect 10.0.0.1:443/tcp`` or, with a name, ``resolve exfil.example.net``.
    network: list[str] = Field(default_factory=list)
    privilege: list[str] = Field(default_factory=list)
    #: Processes that outlived the build command (executables, normalised).
    survivors: list[str] = Field(default_factory=list)
    #: Aspects that hit MAX_ENTRIES (the rest were not kept).
    truncated: list[str] = Field(default_factory=list)

    def key(self) -> str:
        return f"{self.package}@{self.version}"

    def same_behaviour(self, other: Profile) -> bool:
        return all(getattr(self, a) == getattr(other, a) for a in ASPECTS)


class Change(BaseModel):
    """One entry of a profile that the baseline profile did not have (or lost)."""

    model_config = ConfigDict(frozen=True)

    aspect: str
    entry: str
    category: str
    severity: Severity
    #: "added" (new behaviour) or "removed" (no longer seen; never alerts).
    change: Literal["added", "removed"] = "added"


class ProfileDiff(BaseModel):
    """How ``new`` differs from ``base`` (``farm diff``'s ``--json``)."""

    package: str
    base_version: str | None
    new_version: str
    base_builds: list[str] = Field(default_factory=list)
    new_builds: list[str] = Field(default_factory=list)
    changes: list[Change] = Field(default_factory=list)

    def added(self) -> list[Change]:
        return [c for c in self.changes if c.change == "added"]

    def worst(self) -> Severity | None:
        added = sorted(self.added(), key=lambda c: rank(c.severity))
        return added[0].severity if added else None


class BehaviourChange(BaseModel):
    """A build's ``behaviour_changed`` finding for one package (on the BuildRecord)."""

    package: str
    version: str
    #: The profile compared with: its version and the build it came from.
    base_version: str
    base_build: str
    severity: Severity
    changes: list[Change] = Field(default_factory=list)

    def line(self) -> str:
        added = [c for c in self.changes if c.change == "added"]
        shown = "; ".join(f"{c.aspect} {c.entry} [{c.severity}]" for c in added[:5])
        more = f"; and {len(added) - 5} more" if len(added) > 5 else ""
        return (
            f"behaviour_changed ({self.severity}): {self.package} {self.version} "
            f"vs {self.base_version} (build {self.base_build}): {shown}{more}"
        )

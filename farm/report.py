"""A build's report of what gVisor saw: blocked actions aggregated per package.

Callers: ``farm report ID [--json]`` (farm.cli), ``examples/demo.py``, and later
``farm serve``'s report endpoint. Built only from the stored ``BuildRecord``, whose
actions came from gVisor's record, never from the build's output.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

from farm.observe.classify import BlockedAction
from farm.profiles.model import BehaviourChange
from farm.records import BuildRecord, HoneytokenVerdict, ObservationSummary, Status


class ActionGroup(BaseModel):
    """Identical attempts of one package, counted once."""

    kind: str
    what: str
    allowed: bool
    count: int


class PackageReport(BaseModel):
    """Everything one package (in one role) tried. ``who`` is e.g.
    ``evil 0.3.1 (build script)``; unattributed processes are named by executable."""

    who: str
    package: str | None
    version: str | None
    role: str
    kinds: list[str]
    actions: list[ActionGroup]


class BuildReport(BaseModel):
    build_id: str
    status: str
    exit_code: int | None
    observed: bool
    observation: ObservationSummary | None
    packages: list[PackageReport] = Field(default_factory=list)
    #: Every action, unaggregated, with pid, argv, cwd and time.
    actions: list[BlockedAction] = Field(default_factory=list)
    #: ``behaviour_changed`` notes: packages that do something their last known
    #: profile did not (farm.profiles).
    behaviour_changed: list[BehaviourChange] = Field(default_factory=list)
    #: What the build did with farm's planted fake credentials (farm.honeytokens).
    honeytokens: HoneytokenVerdict | None = None


def build_report(record: BuildRecord) -> BuildReport:
    actions = [BlockedAction.model_validate(a) for a in record.blocked_actions]
    return BuildReport(
        build_id=record.id,
        status=record.status.value,
        exit_code=record.exit_code,
        observed=record.observation is not None,
        observation=record.observation,
        packages=_per_package(actions),
        actions=actions,
        behaviour_changed=record.behaviour_changes,
        honeytokens=record.honeytokens,
    )


def _per_package(actions: list[BlockedAction]) -> list[PackageReport]:
    groups: dict[str, list[BlockedAction]] = {}
    for action in actions:
        groups.setdefault(action.who(), []).append(action)
    reports = []
    for who, members in groups.items():
        counts = Counter((a.kind, a.what(), a.allowed) for a in members)
        first = members[0]
        reports.append(
            PackageReport(
                who=who,
                package=first.package,
                version=first.version,
                role=first.role,
                kinds=sorted({a.kind for a in members}),
                actions=[
                    ActionGroup(kind=k, what=w, allowed=allowed, count=n)
                    for (k, w, allowed), n in counts.items()
                ],
            )
        )
    return reports


def render(report: BuildReport) -> str:
    """The human report, one block per package."""
    farm_exit = int(Status(report.status).exit_code)
    lines = [
        f"build {report.build_id}: {report.status} "
        f"(build command exit {report.exit_code}, farm exit {farm_exit})"
    ]
    obs = report.observation
    if obs is None:
        lines.append("  not observed: no record of what the build tried (--no-observe)")
        return "\n".join(lines)
    lines.append(
        f"  {obs.mode} mode; gVisor recorded {obs.events} events, {obs.dropped} dropped, "
        f"{obs.unparseable + obs.overflow} undecodable or over the cap"
        + ("" if obs.complete else f"; INCOMPLETE: {obs.problem}")
    )
    lines += [f"  QUARANTINED: {r}; artifacts withheld" for r in obs.quarantine_reasons]
    lines += _honeytoken_lines(report.honeytokens)
    if obs.unlisted:
        lines.append(
            f"  {obs.unlisted} of {obs.actions} actions are not listed below "
            "(over the record's cap); every one was judged"
        )
    lines += [f"  {c.line()}" for c in report.behaviour_changed]
    if not report.packages:
        lines.append("  no blocked or suspicious actions")
    for pkg in report.packages:
        total = sum(g.count for g in pkg.actions)
        lines.append(f"\n{pkg.who}: {total} action{'s' if total != 1 else ''}")
        for g in pkg.actions:
            times = f" (x{g.count})" if g.count > 1 else ""
            allowed = "  [allowed by policy]" if g.allowed else ""
            lines.append(f"  {g.kind:<15} {g.what}{times}{allowed}")
    return "\n".join(lines)


def _honeytoken_lines(verdict: HoneytokenVerdict | None) -> list[str]:
    if verdict is None:
        return []
    lines = []
    if verdict.read:
        lines.append(f"  HONEYTOKENS READ (severity high): {', '.join(verdict.read)}")
    if verdict.exfiltrating:
        kinds = sorted({*verdict.exfiltrated, *verdict.in_artifacts})
        where = "later actions" if verdict.exfiltrated else ""
        where += (" and " if where and verdict.in_artifacts else "") + (
            "outputs" if verdict.in_artifacts else ""
        )
        lines.append(f"  EXFILTRATION: planted {', '.join(kinds)} credentials in {where}")
    return lines

"""The ``Build`` resource's spec and status, as pydantic models.

Callers: ``farm.k8s.crd`` generates the CRD's schema from these; ``farm.k8s.reconcile``
validates each Build's spec with :func:`cluster_spec` before creating anything, and
writes :class:`BuildStatus`; ``farm.k8s.nodemonitor`` writes its
:class:`ObservationStatus` into it. ``ClusterBuildSpec`` *is* a ``BuildSpec`` (same fields,
validators and limits) except that the source is a git repository the fetch phase
checks out, because a cluster has no local directory to mount.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from farm.errors import SpecError
from farm.observe.classify import BlockedAction
from farm.observe.verdict import MAX_LISTED_ACTIONS
from farm.records import TraceCompleteness
from farm.reprocheck import MAX_RUNS, check_problem
from farm.spec import BuildSpec, _describe

_GIT_URL = re.compile(r"^https://[^\s\0]+$")
_REVISION = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class GitSource(BaseModel):
    """Where the fetch phase gets the sources. A full commit id, never a branch, so the
    build is pinned before it starts and the provenance names exactly what was built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    git: str = Field(description="https:// URL of the repository (reachable via a mirror)")
    revision: str = Field(description="full commit id (40 or 64 hex characters)")
    subdir: str = Field("", description="project directory inside the repository")

    @field_validator("git")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _GIT_URL.match(value):
            raise ValueError(f"{value!r} is not an https:// git URL")
        return value

    @field_validator("revision")
    @classmethod
    def _full_commit(cls, value: str) -> str:
        if not _REVISION.match(value):
            raise ValueError(f"{value!r}: give the full commit id, not a branch or short id")
        return value

    @field_validator("subdir")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = Path(value).parts
        if value.startswith("/") or ".." in parts or "\0" in value:
            raise ValueError(f"{value!r} must be a relative path inside the repository")
        return value

    def descriptor(self) -> dict[str, Any]:
        """This source as an SLSA ResourceDescriptor (``farm.provenance``): the URL and
        the commit the fetch phase checked (``HEAD == revision``)."""
        found: dict[str, Any] = {
            "name": "source",
            "uri": f"git+{self.git}@{self.revision}",
            "digest": {"gitCommit": self.revision},
        }
        if self.subdir:
            found["annotations"] = {"subdir": self.subdir}
        return found


class ClusterBuildSpec(BuildSpec):
    """``Build.spec``: a BuildSpec whose source is git, plus cluster-only scheduling."""

    source: GitSource  # type: ignore[assignment]
    queue: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Kueue LocalQueue; the Jobs start suspended and Kueue admits them",
    )
    registry: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="the NAME of one of the cluster's cargo registries (the controller "
        "config's `registries`; default: the first), never a URL",
    )
    check: int = Field(
        0,
        ge=0,
        # For the CRD, so the API server refuses it too; the controller's rule is _runs.
        json_schema_extra={"maximum": MAX_RUNS},
        description="runs of a reproducibility check: 0 for none, else 2 to 10 (in parallel)",
    )

    @field_validator("source")
    @classmethod
    def _source_is_dir(cls, value: Any) -> Any:  # replaces BuildSpec's local-dir check
        return value

    @field_validator("check")
    @classmethod
    def _runs(cls, value: int) -> int:
        # The rule of local `--check`, so a Build cannot ask for a 1-run "check".
        problem = check_problem(value)
        if problem:
            raise ValueError(f"{problem} (not {value})")
        return value


def cluster_spec(data: dict[str, Any]) -> ClusterBuildSpec:
    """Validate a Build's ``spec``. Raises SpecError naming each bad field."""
    try:
        return ClusterBuildSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([_describe(err) for err in exc.errors()]) from None


Phase = Literal[
    "Pending", "Fetching", "Building", "Collecting", "Succeeded", "Failed", "Quarantined"
]
TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed", "Quarantined"})
#: Actions listed in ``status.observation``: with the byte budget (farm.observe.verdict's
#: caps, shared with a local record) this keeps a Build well under the API server's
#: object size (about 1.5 MiB).
MAX_STATUS_ACTIONS = MAX_LISTED_ACTIONS
#: Keys of ``blockedBySeverity``: a bounded map whatever the actions say (farm.k8s.blocked).
MAX_SEVERITIES = 8


class Condition(BaseModel):
    """The standard ``metav1.Condition`` shape."""

    model_config = ConfigDict(extra="forbid")

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    lastTransitionTime: datetime
    observedGeneration: int | None = None


class ArtifactStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str
    size: int


class ObservationStatus(TraceCompleteness):
    """The node monitor's record of one build container: how complete gVisor's record
    is and every classified action, for the controller to judge by the Build's observe
    policy (``farm.observe.verdict``). Actions past the cap are counted in ``unlisted``
    and make the record incomplete, so enforce mode fails closed."""

    containerID: str = Field(description="the build container this record is of")
    nodeName: str = Field(
        "",
        description="the node whose monitor sent it; the controller accepts only a record "
        "from the node the build pod ran on",
    )
    events: int = Field(0, description="events in gVisor's record")
    actions: list[BlockedAction] = Field(
        default_factory=list,
        max_length=MAX_STATUS_ACTIONS,
        description="the node monitor's listing; the controller moves it to its store "
        "(actionsSha256) as soon as it accepts the record",
    )
    unlisted: int = Field(0, description="actions left out to fit the status")
    #: Set by the controller when it has moved ``actions`` to its store (farm.k8s.blocked);
    #: the node monitor's own record always carries "" and 0, so a new record resets them.
    actionsSha256: str = Field(
        "",
        pattern=r"^([0-9a-f]{64})?$",
        description="sha256 of the canonical JSON list of the actions, kept in the "
        "controller's store (`farm blocked DIGEST` there)",
    )
    listed: int = Field(0, ge=0, description="how many actions that stored list holds")


class RunStatus(BaseModel):
    """One build run's own progress: the build itself (run 0, these fields at the top of
    ``Build.status``) or a reproducibility-check run (``status.checkRuns["<k>"]``)."""

    model_config = ConfigDict(extra="forbid")

    exitCode: int | None = None
    exitTime: datetime | None = Field(
        None, description="when the controller saw the build container end"
    )
    containerIDs: list[str] = Field(default_factory=list)
    logSha256: str = Field("", description="the build log in the controller's store")
    blocked: int = Field(0, description="actions the sandbox blocked (from the node monitor)")
    blockedByKind: dict[str, int] = Field(default_factory=dict)
    blockedBySeverity: dict[str, int] = Field(
        default_factory=dict,
        max_length=MAX_SEVERITIES,
        description="the listed actions by severity (`high`: a planted credential; "
        "`normal`: the rest), counted by the controller",
    )
    observation: ObservationStatus | None = Field(
        None, description="what gVisor saw (from the node monitor)"
    )


class BuildStatus(RunStatus):
    """``Build.status``: the cluster's copy of the build record (the store keeps blobs).
    Its run fields are run 0's, the build whose artifacts and record are the Build's."""

    phase: Phase = "Pending"
    message: str = ""
    observedGeneration: int | None = None
    startTime: datetime | None = None
    #: When the fetch Job succeeded. Its TTL deletes it later; from then on this is the
    #: record that the sources exist, so the Job is never made again.
    fetchTime: datetime | None = None
    completionTime: datetime | None = None
    reproducible: bool | None = Field(
        None, description="the check's verdict (spec.check); unset without a complete check"
    )
    differing: list[str] = Field(
        default_factory=list, description="artifact paths whose digest differed between runs"
    )
    digest: str = Field("", description="sha256 over the artifact list")
    artifacts: list[ArtifactStatus] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
    tornDown: bool = False
    conditions: list[Condition] = Field(default_factory=list)
    provenance: str = Field("", description="sha256 of the signed provenance in the store")
    #: Keyed by the run's number as a string (a map, so node monitors on different
    #: nodes can merge-patch their runs' records without overwriting each other).
    checkRuns: dict[str, RunStatus] = Field(
        default_factory=dict, description="runs 1.. of a reproducibility check"
    )


def run_status(status: BuildStatus, run: int) -> RunStatus:
    """Where run ``run``'s progress lives in ``status`` (created empty on first use)."""
    if run == 0:
        return status
    return status.checkRuns.setdefault(str(run), RunStatus())


def parse_status(raw: dict[str, Any] | None) -> BuildStatus:
    """A Build's status as stored; fields this version does not know are ignored."""
    known = {k: v for k, v in (raw or {}).items() if k in BuildStatus.model_fields}
    try:
        return BuildStatus.model_validate(known)
    except ValidationError:
        return BuildStatus(message="status was unreadable and has been reset")


def set_condition(
    status: BuildStatus, type_: str, value: str, reason: str, message: str, generation: int
) -> None:
    """Set one condition; its lastTransitionTime moves only when its status changes."""
    now = datetime.now(UTC).replace(microsecond=0)
    for i, cond in enumerate(status.conditions):
        if cond.type == type_:
            stamp = cond.lastTransitionTime if cond.status == value else now
            status.conditions[i] = Condition(
                type=type_,
                status=value,  # type: ignore[arg-type]
                reason=reason,
                message=message,
                lastTransitionTime=stamp,
                observedGeneration=generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=value,  # type: ignore[arg-type]
            reason=reason,
            message=message,
            lastTransitionTime=now,
            observedGeneration=generation,
        )
    )

"""Pydantic records of builds and artifacts: the single source of truth for reports.

Callers: ``farm.store`` persists them, ``farm.runner`` fills them, ``farm.cli`` prints
them (``--json`` is ``BuildRecord.summary()``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from farm.errors import ExitCode
from farm.profiles.model import BehaviourChange


class Status(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    OOM = "oom_killed"
    CANCELLED = "cancelled"
    ERROR = "error"
    LOST = "lost"
    #: Enforce mode: the build tried something its policy does not allow (exit 3).
    QUARANTINED = "quarantined"

    @property
    def exit_code(self) -> ExitCode:
        if self is Status.SUCCEEDED:
            return ExitCode.OK
        if self is Status.QUARANTINED:
            return ExitCode.QUARANTINED
        if self in (Status.ERROR, Status.LOST):
            return ExitCode.INFRASTRUCTURE
        return ExitCode.BUILD_FAILED


class Artifact(BaseModel):
    path: str
    sha256: str
    size: int


class Refusal(BaseModel):
    """An output that matched a declared glob but was not collected, and why."""

    path: str
    reason: str


class TraceCompleteness(BaseModel):
    """How complete gVisor's record of a sandbox is. Both the spool's ``Observation``
    (farm/observe/spool.py) and the build record's ``ObservationSummary`` carry these, so
    the counts and ``lost`` mean the same in both."""

    #: Events gVisor said it had to drop (from the datagram headers).
    dropped: int = 0
    #: Datagrams received but not decodable (or torn by a daemon crash).
    unparseable: int = 0
    #: Datagrams received but not kept: past the spool's per-sandbox cap.
    overflow: int = 0
    #: Datagrams of a message type farm has no schema for (kept, without fields).
    unknown_types: int = 0
    #: False when the record is missing or a connection never hung up in time.
    complete: bool = True
    problem: str = ""

    @property
    def lost(self) -> int:
        return self.dropped + self.unparseable + self.overflow

    def completeness(self) -> dict[str, Any]:
        """Just these fields, to carry them from one model to the other."""
        return {name: getattr(self, name) for name in TraceCompleteness.model_fields}


class ObservationSummary(TraceCompleteness):
    """How complete gVisor's record of a build is, and what the policy made of it."""

    mode: str
    events: int = 0
    actions: int = 0
    allowed: int = 0
    #: Actions judged but not listed in the record (over farm.observe.verdict's caps).
    unlisted: int = 0
    #: Every judged action per kind, listed or not (provenance's no-network check).
    by_kind: dict[str, int] = Field(default_factory=dict)
    #: The not-allowed ones per kind (the service's metrics).
    refused_by_kind: dict[str, int] = Field(default_factory=dict)
    #: Non-empty exactly when enforce mode quarantined the build.
    quarantine_reasons: list[str] = Field(default_factory=list)


class ReproVerdict(BaseModel):
    """Result of ``farm build --check N`` (farm.reprocheck), kept on the first build."""

    reproducible: bool
    #: "reproducible", "unreproducible", or "error" when a run did not succeed.
    result: str
    runs: int
    builds: list[str]
    #: What differed between the runs (docs/reproducibility.md).
    variations: list[str]
    #: Artifact paths whose digest differed, or that only some runs produced.
    differing: list[str] = Field(default_factory=list)
    #: sha256 of diffoscope's text report, also stored as an artifact of the build.
    diffoscope_sha256: str | None = None
    checked_at: datetime

    def line(self) -> str:
        if self.reproducible:
            when = f"{self.checked_at:%Y-%m-%d %H:%M} UTC"
            return f"verified {self.runs}\u00d7 reproducible on {when}"
        if self.result == "error":
            return f"check of {self.runs} runs incomplete: a run did not succeed"
        return f"NOT reproducible across {self.runs} runs: {', '.join(self.differing)} differ"


class HoneytokenVerdict(BaseModel):
    """What a build did with the fake credentials farm planted (farm.honeytokens); the
    values themselves are never stored, only their kinds ("ssh", "aws", "cargo", "git")."""

    planted: list[str]
    #: Kinds whose planted file the build opened (each a high-severity sensitive_read).
    read: list[str] = Field(default_factory=list)
    #: Kinds whose value showed up in a later recorded action: the build is exfiltrating.
    exfiltrated: list[str] = Field(default_factory=list)
    #: Kinds found in a declared output (that output was refused).
    in_artifacts: list[str] = Field(default_factory=list)

    @property
    def exfiltrating(self) -> bool:
        return bool(self.exfiltrated or self.in_artifacts)


class LockResolution(BaseModel):
    """A Cargo.lock farm resolved (``--resolve-lock``, farm.fetch.resolve), not the tenant."""

    resolved_by: str = "farm: cargo generate-lockfile --offline in a sandbox with no network"
    mirror: str
    image: str
    image_id: str
    lock_sha256: str

    def describe(self) -> str:
        return f"lock resolved by farm against mirror {self.mirror} (image {self.image})"


class FetchedPackage(BaseModel):
    """One dependency the fetch phase (farm.fetch) downloaded, verified and vendored."""

    model_config = ConfigDict(frozen=True)

    ecosystem: str
    name: str
    version: str
    #: The archive's sha256: the lockfile's checksum, which the bytes were checked against
    #: (None for a git package, which ``commit`` names instead).
    sha256: str | None = None
    commit: str | None = None
    #: The lockfile's source id, and the registry the bytes came from (name and index).
    source: str
    registry: str
    index: str
    #: True when the verified bytes came from the shared crate cache.
    cached: bool = False


class LayerUse(BaseModel):
    """The dependency layer a build mounted under target/ (farm.layers), or, on the
    dependency build itself, the layer it produced."""

    id: str
    key: str
    digest: str
    #: The dependency build whose target tree the layer is.
    built_by: str


class BuildRecord(BaseModel):
    id: str
    status: Status
    tenant: str
    image: str
    image_id: str | None = None
    runtime: str
    #: True only when the user passed --insecure-runtime; it is never silent.
    insecure_runtime: bool = False
    spec: dict[str, Any]
    source_digest: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    exit_code: int | None = None
    container_id: str | None = None
    owner_pid: int | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    refused: list[Refusal] = Field(default_factory=list)
    log_sha256: str | None = None
    log_bytes: int = 0
    log_truncated_bytes: int = 0
    teardown: list[str] = Field(default_factory=list)
    teardown_seconds: float | None = None
    notes: list[str] = Field(default_factory=list)
    #: farm.observe.classify.BlockedAction dumps, in time order.
    blocked_actions: list[dict[str, Any]] = Field(default_factory=list)
    #: None when the build was not observed.
    observation: ObservationSummary | None = None
    reproducibility: ReproVerdict | None = None
    #: Set when the sandbox's sinkhole resolver (farm.sinkhole) was not ready before the
    #: build started: why. Lookups may be unrecorded, so farm.cache never reuses it.
    sinkhole_unready: str | None = None
    #: Set on a service request served from the cache: the build whose result this is.
    cached_from: str | None = None
    #: sha256 of the DSSE envelope holding this build's signed provenance (farm.provenance).
    provenance_sha256: str | None = None
    #: sha256 of the Cargo.lock that was built, in the store, so provenance lists the
    #: crates: a cluster build's as its collector uploaded it, a local build's from its
    #: snapshot (records made before that have none; theirs is read from the source).
    lockfile_sha256: str | None = None
    #: A cluster build's blocked actions as the node monitor listed them, in the
    #: controller's store (farm.k8s.blocked; its Build's ``observation.actionsSha256``).
    blocked_actions_sha256: str | None = None
    #: What the fetch phase vendored; None when the build had no fetch phase.
    fetched: list[FetchedPackage] | None = None
    #: Packages whose behaviour profile gained something since their last known one
    #: (farm.profiles.judge); the report's ``behaviour_changed`` notes.
    behaviour_changes: list[BehaviourChange] = Field(default_factory=list)
    #: None when no honeytokens were planted (farm.honeytokens).
    honeytokens: HoneytokenVerdict | None = None

    #: Set when farm resolved the lock that was built (``--resolve-lock``), not the tenant.
    lock_resolution: LockResolution | None = None
    #: The dependency layer this build started from (None: a cold build).
    layer: LayerUse | None = None
    #: Set on a dependency build (farm.layers.flow): the layer kept from its target tree.
    layer_kept: LayerUse | None = None

    def summary(self) -> dict[str, Any]:
        """The stable ``--json`` shape of ``farm build``."""
        return {
            "id": self.id,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "duration_seconds": self.duration_seconds,
            "image": self.image,
            "source_digest": self.source_digest,
            "artifacts": [a.model_dump() for a in self.artifacts],
            "blocked_actions": self.blocked_actions,
            "observation": self.observation.model_dump() if self.observation else None,
            "reproducibility": (
                self.reproducibility.model_dump(mode="json") if self.reproducibility else None
            ),
            "provenance_sha256": self.provenance_sha256,
            "cached_from": self.cached_from,
            "layer": self.layer.model_dump() if self.layer else None,
        }

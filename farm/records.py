"""Pydantic records of builds and artifacts: the single source of truth for reports.

Callers: ``farm.store`` persists them, ``farm.runner`` fills them, ``farm.cli`` prints
them (``--json`` is ``BuildRecord.summary()``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from farm.errors import ExitCode


class Status(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    OOM = "oom_killed"
    CANCELLED = "cancelled"
    ERROR = "error"
    LOST = "lost"

    @property
    def exit_code(self) -> ExitCode:
        if self is Status.SUCCEEDED:
            return ExitCode.OK
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
    blocked_actions: list[dict[str, Any]] = Field(default_factory=list)

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
        }

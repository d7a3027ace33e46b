"""The neutral sandbox contract between policy and backends.

``farm.policy`` produces a ``SandboxSpec``; a ``Backend`` (``farm.backends.*``) runs it
and returns a ``SandboxResult``. Backends translate the spec; they never reinterpret it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict


class Mount(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Path
    target: str
    read_only: bool


class SandboxSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    workdir: str
    user: str
    hostname: str
    mounts: list[Mount]
    #: tmpfs target -> size in bytes; runsc mounts /tmp itself, so it is always capped here.
    tmpfs: dict[str, int]
    #: Bytes the writable mounts may hold together. Local: they are directories of one
    #: filesystem of this size (farm.workdisk); cluster: emptyDir sizes and the pod's
    #: ephemeral-storage (farm.k8s.objects).
    disk: int
    cpus: float
    memory: int
    pids: int
    deadline_seconds: int
    log_cap: int
    labels: dict[str, str]
    network: Literal["none"] = "none"
    #: Run farm's sinkhole resolver beside the build (farm.sinkhole); the local backend
    #: under gVisor starts it from the sandbox's pid 1, others ignore it.
    sinkhole: bool = False
    read_only_root: Literal[True] = True


class SandboxResult(BaseModel):
    container_id: str
    runtime: str
    exit_code: int | None
    timed_out: bool = False
    oom_killed: bool = False
    started_at: datetime
    finished_at: datetime
    #: What teardown removed (container, containerd task, runsc PIDs).
    teardown: list[str] = []
    #: How long that teardown took (farm_teardown_seconds).
    teardown_seconds: float | None = None


LogSink = Callable[[bytes], None]


class Backend(Protocol):
    """What the runner needs from a place that runs sandboxes."""

    name: str

    def preflight(self, spec: SandboxSpec) -> str:
        """Check, before creating anything, that ``spec`` can run; return the image id.

        Raises FarmError naming what is missing."""

    def image_id(self, image: str) -> str:
        """``image``'s current id, for a cache key (farm.buildflow.look_up): a lookup
        creates nothing and checks no runtime. Raises FarmError when it is missing."""

    def run(
        self, spec: SandboxSpec, *, log: LogSink, on_created: Callable[[str], None]
    ) -> SandboxResult:
        """Run to completion or deadline, stream output to ``log``, always tear down."""

    def list_sandboxes(self) -> dict[str, str]:
        """This installation's live or leftover sandboxes: sandbox id -> build id."""

    def teardown(self, sandbox_id: str) -> list[str]:
        """Remove a sandbox and everything it left; idempotent. Returns what was removed."""

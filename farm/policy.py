"""Sandbox policy: turn a BuildSpec into the one SandboxSpec every backend runs.

Callers: ``farm.runner``. This is the only place that decides what a build may see:
its source read-only, writable target/ and /out (both on one filesystem of
``resources.disk`` bytes, farm.workdisk), a capped /tmp, a fixed baseline environment,
no network, and nothing else from the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.sandbox import Mount, SandboxSpec
from farm.settings import BUILD_LABEL, SANDBOX_UID, Settings
from farm.spec import BuildSpec

SRC, TARGET, OUT, TMP = "/src", "/build/target", "/out", "/tmp"
HOSTNAME = "farm-build"
#: 2023-11-14T22:13:20Z: used when neither the spec nor the source gives a time.
DEFAULT_EPOCH = 1_700_000_000
#: Sandbox paths rewritten in debug info and panic messages (rustc --remap-path-prefix).
PATH_REMAP = (
    (SRC, "/farm/src"),
    (f"{TMP}/cargo-home", "/farm/cargo-home"),
    (TARGET, "/farm/target"),
)


@dataclass(frozen=True)
class BuildDirs:
    """Host directories of one build; the only host paths a sandbox ever sees."""

    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def image(self) -> Path:
        """The sparse filesystem image of ``resources.disk`` bytes (farm.workdisk)."""
        return self.root / "disk.img"

    @property
    def disk(self) -> Path:
        """Where ``image`` is mounted: everything the build can write lives below."""
        return self.root / "disk"

    @property
    def target(self) -> Path:
        return self.disk / "target"

    @property
    def out(self) -> Path:
        return self.disk / "out"

    def output_root(self, name: str) -> Path:
        """Host dir behind an output glob's first component (``out`` or ``target``)."""
        return {"out": self.out, "target": self.target}[name]


def source_date_epoch(spec: BuildSpec) -> int:
    """The build's fixed time: the spec's (``runner.resolve`` fills it from the source's
    last git commit), else DEFAULT_EPOCH."""
    return spec.source_date_epoch if spec.source_date_epoch is not None else DEFAULT_EPOCH


def remap_rustflags(user_flags: str) -> str:
    """The spec's RUSTFLAGS plus path remapping, so no host or sandbox path reaches a binary."""
    remap = [f"--remap-path-prefix={path}={name}" for path, name in PATH_REMAP]
    return " ".join([user_flags.strip(), *remap]).strip()


def baseline_env(spec: BuildSpec) -> dict[str, str]:
    """The environment every build gets. Host variables never pass through.

    Together with the fixed hostname, build paths, umask 022 (the OCI runtimes' default,
    which farm never changes) and the snapshot's clamped mtimes, this is the normalised
    environment that makes a build reproducible (docs/reproducibility.md).
    """
    epoch = source_date_epoch(spec)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": f"{TMP}/home",
        "TMPDIR": TMP,
        "USER": "builder",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(epoch),
        "CARGO_HOME": f"{TMP}/cargo-home",
        "CARGO_TARGET_DIR": TARGET,
        "FARM_OUT": OUT,
        "CARGO_INCREMENTAL": "0",
        "RUSTFLAGS": remap_rustflags(spec.env.get("RUSTFLAGS", "")),
    }


def sandbox_for(spec: BuildSpec, build_id: str, dirs: BuildDirs, settings: Settings) -> SandboxSpec:
    argv = spec.argv or []
    return SandboxSpec(
        name=f"farm-{build_id}",
        image=spec.image,
        argv=argv,
        # The spec's env cannot override the baseline: BuildSpec rejects reserved names.
        env={**spec.env, **baseline_env(spec)},
        workdir=SRC,
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        hostname=HOSTNAME,
        mounts=[
            Mount(source=dirs.src, target=SRC, read_only=True),
            Mount(source=dirs.target, target=TARGET, read_only=False),
            Mount(source=dirs.out, target=OUT, read_only=False),
        ],
        tmpfs={TMP: spec.resources.scratch},
        disk=spec.resources.disk,
        cpus=spec.resources.cpus,
        memory=spec.resources.memory,
        pids=spec.resources.pids,
        deadline_seconds=spec.timeout_seconds,
        log_cap=spec.limits.log,
        labels={**settings.base_labels, BUILD_LABEL: build_id, "io.farm.tenant": spec.tenant},
    )

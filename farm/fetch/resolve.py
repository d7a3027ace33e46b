"""Lock resolution behind an explicit flag: the image's own cargo writes Cargo.lock against
a farm mirror, in a gVisor sandbox with no network.

Callers: ``farm.runner`` for ``farm build --resolve-lock MIRROR_DIR`` and for a ``farm
serve`` build submitted with ``resolve_lock`` (against the operator's ``--resolve-mirror``;
``farm fetch`` and the cluster use the lock they are given), the realworld corpus
(tests/realworld) and bench/realworld.py, whose programs are re-resolved against the
Debian-derived mirror tier (farm.mirror.debian_binary).

Why a sandbox: cargo's resolver is trusted code, but it reads the tenant's manifests, and
farm never runs anything on a tenant's input outside one. What the sandbox sees:
- ``/manifests`` (read-only): a copy of the tree's Cargo.toml files only, with every
  ``.rs`` file replaced by an empty stub so cargo's target discovery works; no source
  code, no ``.cargo/config*`` of the tenant, no links (they are not copied);
- ``/mirror`` (read-only): the mirror directory, read by cargo as a ``local-registry``;
- ``/.cargo/config.toml`` (read-only, over the image's own): crates-io replaced by that
  local registry, ``net.offline``. cargo reads config from every ancestor of the working
  directory, so this root file is the one every project sees;
- a capped ``/tmp`` where cargo works on a copy; no network, no writable host mount.
The lock comes back on stdout after a per-run random marker the tree cannot know, and is
validated by farm.ecosystems.cargo.lockfile before anyone uses it. No build script runs:
``cargo generate-lockfile`` only resolves. Its checksums are the mirror's, so a lock
resolved against a Debian-derived mirror names Debian-derived crates, never crates.io's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from farm.ecosystems.cargo.lockfile import Lockfile, read_lock
from farm.errors import InputError, LockfileError
from farm.records import LockResolution
from farm.sandbox import Backend, Mount, SandboxSpec
from farm.settings import BUILD_LABEL, SANDBOX_UID, Settings

if TYPE_CHECKING:
    from farm.spec import BuildSpec

MANIFESTS, MIRROR, CONFIG = "/manifests", "/mirror", "/.cargo/config.toml"
#: Bounds on the tree walked for manifests: entries seen, manifests copied, one manifest.
MAX_ENTRIES = 200_000
MAX_MANIFESTS = 20_000
MAX_MANIFEST = 4 << 20
SKIP_DIRS = {"target"}
#: The resolver sandbox's own ceilings (cargo's resolver on one workspace's manifests).
RESOLVE_DEADLINE = 600
RESOLVE_MEMORY = 1 << 30
RESOLVE_CPUS = 1.0
CARGO_CONFIG = f"""\
[source.crates-io]
replace-with = "farm-mirror"

[source.farm-mirror]
local-registry = "{MIRROR}"

[net]
offline = true
"""
# One stream: docker delivers stdout and stderr through separate pipes, so cargo's
# progress lines on stderr (trixie's cargo prints "Adding foo v1 (available: v2)" while
# resolving) could land inside the lock that follows the marker on stdout.
SCRIPT = """\
exec 2>&1
set -e
cp -R /manifests /tmp/project
cd /tmp/project
cargo generate-lockfile --offline
printf '\\n%s\\n' "$FARM_LOCK_MARK"
cat Cargo.lock
"""


@dataclass(frozen=True)
class ResolveBounds:
    """The resolver sandbox's ceilings: farm's own, lowered to the build's admitted ones
    (a ``farm serve`` tenant may ask for resolution; it must not get more time or memory
    for it than the operator admitted for the build itself)."""

    deadline_seconds: int = RESOLVE_DEADLINE
    memory: int = RESOLVE_MEMORY
    cpus: float = RESOLVE_CPUS

    @classmethod
    def of(cls, spec: BuildSpec) -> ResolveBounds:
        return cls(
            deadline_seconds=min(RESOLVE_DEADLINE, spec.timeout_seconds),
            memory=min(RESOLVE_MEMORY, spec.resources.memory),
            cpus=min(RESOLVE_CPUS, spec.resources.cpus),
        )


class ResolvedLock(BaseModel):
    text: str
    lockfile: Lockfile
    resolution: LockResolution


def resolve_lock(
    source: Path,
    mirror: Path,
    *,
    settings: Settings,
    image: str | None = None,
    backend: Backend | None = None,
    bounds: ResolveBounds | None = None,
) -> ResolvedLock:
    """Resolve ``source``'s workspace against ``mirror``; the tree itself is never written.

    Raises InputError for a source without Cargo.toml or a mirror that is not one, and
    LockfileError (with cargo's own words) when the mirror cannot satisfy the manifests.
    """
    mirror = mirror.resolve()
    if not (mirror / "index").is_dir():
        raise InputError(
            f"--resolve-lock: {mirror} is not a farm mirror (no index/); see `farm mirror`"
        )
    image = image or settings.default_image
    # Observation watches third-party code; this sandbox runs only cargo's resolver.
    quiet = dataclasses.replace(settings, observe=False)
    if backend is None:
        from farm.backends.local import LocalBackend  # docker-py: only when resolving

        backend = LocalBackend(quiet)
    run_id = secrets.token_hex(6)
    work = settings.work_dir / f"resolve-{run_id}"
    work.mkdir(parents=True, mode=0o755)
    try:
        stage_manifests(source, work / "manifests")
        (work / "config.toml").write_text(CARGO_CONFIG)
        mark = f"FARM-LOCK-{secrets.token_hex(16)}"
        spec = _spec(run_id, image, work, mirror, mark, quiet, bounds or ResolveBounds())
        image_id = backend.preflight(spec)
        log = bytearray()
        result = backend.run(spec, log=log.extend, on_created=lambda _id: None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = _lock_text(bytes(log), mark, result.exit_code, result.timed_out, mirror)
    resolution = LockResolution(
        mirror=str(mirror),
        image=image,
        image_id=image_id,
        lock_sha256=hashlib.sha256(text.encode()).hexdigest(),
    )
    return ResolvedLock(text=text, lockfile=read_lock(text), resolution=resolution)


def stage_manifests(source: Path, dest: Path) -> int:
    """Copy every Cargo.toml below ``source`` to ``dest`` and stub every ``.rs`` file.

    Links are never followed or copied; dot-directories (``.git``, the tenant's
    ``.cargo``) and ``target`` are skipped. Returns the number of manifests copied.
    """
    if not (source / "Cargo.toml").is_file() or (source / "Cargo.toml").is_symlink():
        raise InputError(f"--resolve-lock: {source} has no Cargo.toml to resolve")
    copied = seen = 0
    for root, dirs, files in os.walk(source, followlinks=False):
        rel = Path(root).relative_to(source)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        seen += len(dirs) + len(files)
        if seen > MAX_ENTRIES:
            raise InputError(f"--resolve-lock: {source} has more than {MAX_ENTRIES} entries")
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            path = Path(root) / name
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                continue
            if name == "Cargo.toml":
                copied += 1
                if copied > MAX_MANIFESTS or info.st_size > MAX_MANIFEST:
                    raise InputError(f"--resolve-lock: {rel / name} is past farm's manifest bounds")
                _copy_nofollow(path, dest / rel / name)
            elif name.endswith(".rs"):
                (dest / rel / name).touch()
    return copied


def _copy_nofollow(src: Path, dst: Path) -> None:
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        dst.write_bytes(f.read(MAX_MANIFEST + 1)[:MAX_MANIFEST])


def _spec(
    run_id: str,
    image: str,
    work: Path,
    mirror: Path,
    mark: str,
    settings: Settings,
    bounds: ResolveBounds,
) -> SandboxSpec:
    return SandboxSpec(
        name=f"farm-resolve-{run_id}",
        image=image,
        argv=["sh", "-c", SCRIPT],
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp/home",
            "CARGO_HOME": "/tmp/cargo-home",
            "LANG": "C.UTF-8",
            "FARM_LOCK_MARK": mark,
        },
        workdir="/",
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        hostname="farm-resolve",
        mounts=[
            Mount(source=work / "manifests", target=MANIFESTS, read_only=True),
            Mount(source=mirror, target=MIRROR, read_only=True),
            Mount(source=work / "config.toml", target=CONFIG, read_only=True),
        ],
        tmpfs={"/tmp": 512 << 20},
        disk=0,
        cpus=bounds.cpus,
        memory=bounds.memory,
        pids=256,
        deadline_seconds=bounds.deadline_seconds,
        log_cap=32 << 20,
        labels={**settings.base_labels, BUILD_LABEL: f"resolve-{run_id}"},
    )


def _lock_text(log: bytes, mark: str, exit_code: int | None, timed_out: bool, mirror: Path) -> str:
    text = log.decode("utf-8", "replace")
    head, found, lock = text.partition(f"\n{mark}\n")
    if exit_code == 0 and found:
        return lock
    said = "\n    ".join(line for line in head.strip().splitlines()[-12:])
    why = "timed out" if timed_out else f"exit {exit_code}"
    raise LockfileError(
        f"cargo could not resolve the manifests against mirror {mirror} ({why}):\n    {said}\n"
        "add the missing crates to the mirror (`farm mirror add`), or commit a Cargo.lock"
    )

"""Run one hello-serde build straight under runc or runsc, without dockerd.

Callers: bench/profile.py (runsc's CPU profile) and bench/levers.py (runsc flags against
runc). Both need runsc flags that farm's dockerd runtimes do not carry (`--profile`,
`--dcache`, ...), and adding a dockerd runtime needs a reload of a shared daemon, so these
benchmarks make an OCI bundle from the farm/rust image's root filesystem and run the
runtimes themselves. The bundle mirrors farm's sandbox where it matters to speed: the
image's root read-only, /src a read-only bind of the project, target/ a fresh host
directory per run, /tmp a tmpfs, no network, farm's baseline environment. It is a
benchmark harness, not a sandbox: it runs as root in the container with the runtimes'
default capabilities, and `--profile` loosens runsc's seccomp filter (never use it in
production; farm's runtimes never set it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-serde"
IMAGE = "farm/rust:bookworm"
LABELS = ["--label", "io.farm.managed=true", "--label", "io.farm.bench=oci"]
CACHE = Path("/var/tmp/farm-bench-oci")
#: farm's runtime flags (farm/host.py RUNSC_RUNTIME): every variant starts from these.
RUNSC_BASE = ["--network=none", "--platform=ptrace"]
ARGV = ["cargo", "build", "--release", "--locked", "--offline"]
ENV = [
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "HOME=/tmp/home",
    "TMPDIR=/tmp",
    "LANG=C.UTF-8",
    "TZ=UTC",
    "SOURCE_DATE_EPOCH=1700000000",
    "CARGO_HOME=/tmp/cargo-home",
    "CARGO_TARGET_DIR=/build/target",
    "CARGO_INCREMENTAL=0",
]


def loadavg() -> str:
    """The machine's load when a run starts and ends: the figures are only as good as it."""
    return Path("/proc/loadavg").read_text().strip()


def rootfs() -> Path:
    """The image's root filesystem, exported once per image id into CACHE."""
    image_id = subprocess.run(
        ["docker", "image", "inspect", IMAGE, "--format", "{{.Id}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = CACHE / image_id.removeprefix("sha256:")[:16]
    if (target / ".complete").exists():
        return target / "rootfs"
    shutil.rmtree(target, ignore_errors=True)
    (target / "rootfs").mkdir(parents=True)
    created = subprocess.run(
        ["docker", "create", "--network=none", *LABELS, IMAGE, "true"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", created], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(target / "rootfs")], stdin=export.stdout, check=True)
        if export.wait() != 0:
            raise SystemExit(f"docker export {created} failed")
    finally:
        subprocess.run(["docker", "rm", created], check=True, capture_output=True)
    (target / ".complete").write_text(image_id)
    return target / "rootfs"


def _mount(dest: str, kind: str, source: str, options: list[str]) -> dict:
    return {"destination": dest, "type": kind, "source": source, "options": options}


def config(root: Path, src: Path, target: Path, argv: list[str]) -> dict:
    """An OCI runtime config with farm's mounts and environment."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": ENV,
            "cwd": "/src",
            "noNewPrivileges": True,
        },
        "root": {"path": str(root), "readonly": True},
        "hostname": "farm-build",
        "mounts": [
            _mount("/proc", "proc", "proc", []),
            _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755"]),
            _mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance"]),
            _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "size=65536k"]),
            _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
            _mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev", "size=2g", "mode=1777"]),
            _mount("/src", "bind", str(src), ["rbind", "ro"]),
            _mount("/build/target", "bind", str(target), ["rbind", "rw"]),
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


@dataclass
class Run:
    variant: str
    seconds: float
    exit_code: int
    loadavg_before: str
    loadavg_after: str
    extra: dict = field(default_factory=dict)


def run(
    variant: str, command: list[str], argv: list[str] | None = None, expect: str | None = None
) -> Run:
    """One cold build: a fresh bundle dir and target/, COMMAND + `run --bundle B ID`.

    Fails unless the build exits 0 and target/ holds EXPECT (a glob; by default the
    example's binary when ARGV is the default)."""
    with tempfile.TemporaryDirectory(prefix="farm-bench-run-", dir="/var/tmp") as tmp:
        bundle, target = Path(tmp), Path(tmp) / "target"
        target.mkdir()
        conf = config(rootfs(), EXAMPLE, target, argv or ARGV)
        (bundle / "config.json").write_text(json.dumps(conf))
        cid = f"farm-bench-{bundle.name.rsplit('-', 1)[-1]}"
        before = loadavg()
        began = time.monotonic()
        done = subprocess.run(
            [*command, "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seconds = time.monotonic() - began
        after = loadavg()
        expected = expect or ("release/hello-serde" if argv is None else None)
        built = expected is None or any(target.glob(expected))
    if done.returncode != 0 or not built:
        raise SystemExit(f"{variant}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return Run(variant, round(seconds, 2), done.returncode, before, after)


def runc() -> list[str]:
    return ["runc", "--root", str(CACHE / "runc-root")]


def runsc(*flags: str, binary: str = "runsc") -> list[str]:
    return [binary, "--root", str(CACHE / "runsc-root"), *RUNSC_BASE, *flags]

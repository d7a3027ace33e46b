"""Host bootstrap and diagnosis: Debian packages, gVisor, dockerd and its runsc runtime.

Callers: ``farm host setup`` (idempotent; run by the README's commands and CI) and
``farm doctor`` (reports each missing piece with its fix). Bootstrap only installs and
starts things; it never touches a container it did not create.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from farm.errors import InfrastructureError
from farm.settings import Settings

#: e2fsprogs (mkfs.ext4) makes each build's capped filesystem (farm.workdisk).
APT_PACKAGES = (
    "docker.io",
    "containerd",
    "mmdebstrap",
    "iptables",
    "diffoscope-minimal",
    "e2fsprogs",
)
DAEMON_JSON = Path("/etc/docker/daemon.json")
DOCKER_SOCKET = Path("/var/run/docker.sock")
DOCKER_PIDFILE = Path("/var/run/docker.pid")
#: bookworm's runsc (20221219) fails every directory read with EINVAL on this host's
#: kernel (`ls /` inside the sandbox); trixie's static build works. See docs/sandbox.md.
RUNSC_MIN_VERSION = 20240729
RUNSC_SUITE = "trixie"
#: ptrace measured faster than systrap for cargo builds on this machine kind (docs/performance.md).
RUNSC_RUNTIME = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--platform=ptrace"]}
#: The same sandbox, plus gVisor's runtime monitoring sent to farm's observer socket.
POD_INIT_CONFIG = Path("/etc/farm/pod-init.json")
OBSERVED_RUNTIME = {
    "path": "/usr/bin/runsc",
    "runtimeArgs": [*RUNSC_RUNTIME["runtimeArgs"], f"--pod-init-config={POD_INIT_CONFIG}"],
}
RUNTIMES = {"runsc": RUNSC_RUNTIME, "runsc-observed": OBSERVED_RUNTIME}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def missing_packages() -> list[str]:
    return [
        p
        for p in APT_PACKAGES
        if _run(["dpkg-query", "-W", "-f=${Status}", p]).stdout != "install ok installed"
    ]


def runsc_version(path: str = "/usr/bin/runsc") -> int | None:
    if not os.path.exists(path):
        return None
    match = re.search(r"(\d{8})", _run([path, "--version"]).stdout)
    return int(match.group(1)) if match else None


def daemon_config() -> dict:
    try:
        return json.loads(DAEMON_JSON.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise InfrastructureError(
            f"{DAEMON_JSON} is not valid JSON ({exc}); fix it by hand"
        ) from exc


def dockerd_up(timeout: float = 5) -> bool:
    if not DOCKER_SOCKET.exists():
        return False
    return (
        _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=timeout).returncode
        == 0
    )


LOOP_CONTROL = "/dev/loop-control"


def diagnose(settings: Settings) -> list[Check]:
    """Every prerequisite of a sandboxed build, each with the command that fixes it."""
    setup = "farm host setup"
    missing = missing_packages()
    version = runsc_version()
    runtimes = daemon_config().get("runtimes", {})
    runtime = {name: runtimes.get(name) for name in RUNTIMES}
    checks = [
        Check("debian packages", not missing, ", ".join(missing) or "installed", setup),
        Check(
            "runsc (gVisor)",
            (version or 0) >= RUNSC_MIN_VERSION,
            f"version {version}" if version else "not installed",
            f"{setup} (installs Debian {RUNSC_SUITE}'s runsc >= {RUNSC_MIN_VERSION})",
        ),
        Check(
            "dockerd runtime config",
            runtime == RUNTIMES and _pod_init_current(),
            f"{DAEMON_JSON}: {runtime}; {POD_INIT_CONFIG}",
            setup,
        ),
        Check("dockerd running", dockerd_up(), str(DOCKER_SOCKET), setup),
        Check(
            "FARM_HOME writable",
            _writable(settings.home),
            str(settings.home),
            f"mkdir -p {settings.home} or set FARM_HOME",
        ),
        Check(
            "loop devices (resources.disk)",
            os.path.exists(LOOP_CONTROL),
            LOOP_CONTROL,
            "modprobe loop (each build's target/ and /out live on a loop-mounted image)",
        ),
    ]
    if checks[3].ok:
        info = _run(["docker", "info", "--format", "{{json .Runtimes}}"]).stdout
        checks.append(Check("dockerd knows runsc", '"runsc"' in info, info.strip()[:200], setup))
        have = _run(["docker", "image", "inspect", settings.default_image]).returncode == 0
        checks.append(Check("builder image", have, settings.default_image, "farm image build rust"))
    return checks


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        return os.access(path, os.W_OK)
    except OSError:
        return False


def setup(settings: Settings, log: Callable[[str], None] = print) -> None:
    """Install and start everything a local build needs. Safe to run again.

    Raises InfrastructureError with the failing command's output.
    """
    if os.geteuid() != 0:
        raise InfrastructureError("farm host setup must run as root (it installs packages)")
    settings.home.mkdir(parents=True, exist_ok=True)
    if missing := missing_packages():
        log(f"farm: installing {' '.join(missing)}")
        _check(["apt-get", "update", "-qq"])
        _check(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if (runsc_version() or 0) < RUNSC_MIN_VERSION:
        _install_runsc(settings, log)
    changed = _configure_runtime(log)
    if not dockerd_up():
        _start_dockerd(settings, log)
    elif changed:
        _reload_dockerd(log)


def _check(argv: list[str], **kw: object) -> str:
    done = _run(argv, **kw)
    if done.returncode != 0:
        raise InfrastructureError(f"`{' '.join(argv)}` failed:\n{done.stderr[-2000:]}")
    return done.stdout


def _install_runsc(settings: Settings, log: Callable[[str], None]) -> None:
    """Install runsc from Debian trixie with dpkg (it is a static binary)."""
    log(f"farm: installing runsc from Debian {RUNSC_SUITE}")
    _check(["dpkg", "-i", str(_download_deb(settings, RUNSC_SUITE, "runsc"))])


def _download_deb(settings: Settings, suite: str, package: str) -> Path:
    """Fetch one package of Debian ``suite`` with a private apt state, so the host's own
    sources stay untouched. Returns the .deb's path."""
    root = settings.home / f"apt-{suite}"
    for sub in ("lists/partial", "archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(f"deb http://deb.debian.org/debian {suite} main\n")
    opts = [
        f"-oDir::Etc::SourceList={root}/sources.list",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={root}/lists",
        f"-oDir::Cache::Archives={root}/archives",
        "-oAPT::Sandbox::User=root",
    ]
    _check(["apt-get", *opts, "update", "-qq"])
    _check(["apt-get", *opts, "download", package], cwd=root)
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        raise InfrastructureError(f"apt-get download {package} left no .deb in {root}")
    return debs[-1]


def _pod_init_json() -> str:
    from farm.observe import pod_init_config
    from farm.observe.daemon import OBSERVER_SOCKET

    return json.dumps(pod_init_config(OBSERVER_SOCKET), indent=2) + "\n"


def _pod_init_current() -> bool:
    return POD_INIT_CONFIG.exists() and POD_INIT_CONFIG.read_text() == _pod_init_json()


def trace_config_current() -> bool:
    """True if runsc-observed's trace configuration is the one this farm expects (the
    points, context fields and socket its classifier relies on)."""
    return _pod_init_current()


def _configure_runtime(log: Callable[[str], None]) -> bool:
    if not _pod_init_current():
        POD_INIT_CONFIG.parent.mkdir(parents=True, exist_ok=True)
        POD_INIT_CONFIG.write_text(_pod_init_json())
        log(f"farm: wrote gVisor's trace configuration {POD_INIT_CONFIG}")
    config = daemon_config()
    runtimes = config.setdefault("runtimes", {})
    if all(runtimes.get(name) == want for name, want in RUNTIMES.items()):
        return False
    runtimes.update(RUNTIMES)
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(json.dumps(config, indent=2) + "\n")
    log(f"farm: configured the runsc runtimes in {DAEMON_JSON}")
    return True


def _start_dockerd(settings: Settings, log: Callable[[str], None]) -> None:
    if not shutil.which("dockerd"):
        raise InfrastructureError("dockerd is not installed; run `farm host setup`")
    logfile = settings.home / "dockerd.log"
    log(f"farm: starting dockerd (log: {logfile})")
    with logfile.open("ab") as out:
        subprocess.Popen(
            ["dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dockerd_up():
            return
        time.sleep(0.5)
    raise InfrastructureError(f"dockerd did not come up within 60 s; see {logfile}")


def _reload_dockerd(log: Callable[[str], None]) -> None:
    # Runtimes are reloadable: SIGHUP applies them without stopping running containers.
    pid = int(DOCKER_PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGHUP)
    time.sleep(1)
    log("farm: reloaded dockerd's configuration")

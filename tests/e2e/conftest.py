"""E2E fixtures: real dockerd, real runsc, a fresh FARM_HOME per test, and a check
after every test that nothing of that FARM_HOME is left running."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from farm.backends.hostprocs import sandbox_pids
from farm.settings import DEFAULT_IMAGE, HOME_LABEL, MANAGED_LABEL
from farm.store import Store
from farm.workdisk import loops_below, mounts_below, release

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    c = docker.from_env()
    c.images.get(DEFAULT_IMAGE)  # `make setup` builds it; a missing image is a failure
    return c


@pytest.fixture
def home(tmp_path: Path, client: docker.DockerClient) -> Iterator[Path]:
    home = tmp_path / "farm-home"
    yield home
    leftovers = farm_containers(client, home)
    for c in leftovers:  # clean up by id, then fail: a leak is a bug
        c.remove(force=True)
    assert not leftovers, f"containers left behind: {[c.id for c in leftovers]}"
    mounted = [*map(str, mounts_below(home)), *loops_below(home)]
    release(home)  # by path under this FARM_HOME only, then fail: a leak is a bug
    assert not mounted, f"filesystems left behind: {mounted}"
    work = home / "work"
    assert not work.exists() or not any(work.iterdir()), "a build's directories were left"
    if (home / "index.sqlite").exists():
        for record in Store(home).list():
            if record.container_id:
                assert sandbox_pids(record.container_id) == [], f"runsc left for {record.id}"


def farm_containers(client: docker.DockerClient, home: Path) -> list:
    labels = [f"{MANAGED_LABEL}=true", f"{HOME_LABEL}={home.resolve()}"]
    # ignore_removed: docker-py inspects each listed container, and one may go in between.
    return client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)


def created(client: docker.DockerClient, home: Path, since: float) -> list[str]:
    """Ids of containers this FARM_HOME created since ``since``, from dockerd's events."""
    labels = [f"{MANAGED_LABEL}=true", f"{HOME_LABEL}={home.resolve()}"]
    events = client.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "label": labels},
        decode=True,
    )
    try:
        # The API's `since` has whole seconds; timeNano keeps events from before ``since`` out.
        return [e["id"] for e in events if e["timeNano"] >= since * 1e9]
    finally:
        events.close()


def farm_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return {**env, "FARM_HOME": str(home), **extra}


def farm(
    home: Path, *args: str, timeout: float | None = 900, **extra_env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=farm_env(home, **extra_env),
    )


def farm_json(
    home: Path, *args: str, timeout: float | None = 900, **extra_env: str
) -> tuple[int, dict]:
    done = farm(home, args[0], "--json", *args[1:], timeout=timeout, **extra_env)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        raise AssertionError(
            f"no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        ) from None


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def kill_cli_once_running(
    client: docker.DockerClient, home: Path, *build_args: str, timeout: float = 300
):
    """Run ``farm build ARGS…`` and SIGKILL the CLI once its sandbox runs, as in a crash:
    farm gets no chance to stop or clean up anything. Returns the running container."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "build", *build_args],
        env=farm_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return wait_for(
            lambda: [c for c in farm_containers(client, home) if c.status == "running"],
            timeout=timeout,
            what="sandbox to start",
        )[0]
    finally:
        cli.kill()
        cli.wait()


def run_artifact(client: docker.DockerClient, binary: Path) -> str:
    """Run a built binary in gVisor with no network (never on the host)."""
    out = client.containers.run(
        DEFAULT_IMAGE,
        ["/app"],
        runtime="runsc",
        network_mode="none",
        remove=True,
        read_only=True,
        user="10001:10001",
        labels={MANAGED_LABEL: "true"},
        volumes={str(binary): {"bind": "/app", "mode": "ro"}},
    )
    return out.decode()


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


class Listener:
    """TCP and UDP on one loopback port; records every byte and connection."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.received: list[bytes] = []
        self.tcp.settimeout(0.2)
        self.udp.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
                self.received.append(b"tcp-connect:" + conn.recv(65536))
                conn.close()
            except TimeoutError:
                pass
            with contextlib.suppress(TimeoutError):
                self.received.append(b"udp:" + self.udp.recv(65536))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.tcp.close()
        self.udp.close()


def docker_build(
    dockerfile: Path, context: Path, *, target: str | None = None, base: str = DEFAULT_IMAGE
) -> str:
    """`docker build` one of containers/'s Dockerfiles; returns the image id. BASE is
    swapped for the offline bookworm image (no registry is reachable here: same suite).
    The image is labelled farm-managed; remove it with ``remove_built``."""
    argv = ["docker", "build", "-q", "--force-rm", "-f", str(dockerfile)]
    argv += ["--build-arg", f"BASE={base}", "--label", f"{MANAGED_LABEL}=true"]
    if target:
        argv += ["--target", target]
    done = subprocess.run([*argv, str(context)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def remove_built(client: docker.DockerClient, ids: list[str], before: set[str]) -> None:
    """Remove the built images by id, then the untagged intermediate images the builds
    left (labelled by their first stage), newest first so children go before parents."""
    for image_id in ids:
        client.images.remove(image_id, force=True)
    leftovers = [
        i
        for i in client.images.list(all=True, filters={"dangling": True})
        if i.id not in before and (i.labels or {}).get(MANAGED_LABEL) == "true"
    ]
    for image in sorted(leftovers, key=lambda i: i.attrs["Created"], reverse=True):
        client.images.remove(image.id, force=True)


@pytest.fixture(scope="session")
def farm_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """farm and its dependencies as wheels (what `make wheels` makes), built once for
    the image tests."""
    from farm.wheelhouse import build_wheels

    return build_wheels(tmp_path_factory.mktemp("wheels"))

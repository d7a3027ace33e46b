"""The local backend: one Docker Engine with the gVisor ``runsc`` runtime.

Callers: ``farm.runner`` through the ``farm.sandbox.Backend`` protocol. Builds are
tracked by container id from the moment Docker creates them, because killing the
docker client does not stop a container, and every teardown removes the container,
any containerd task Docker forgot, and stray runsc processes. Each container also ends
itself a little after its deadline (``backstop``), so a farm killed mid-build leaves no
build running; ``farm reap`` removes the stopped container later.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions

from farm import sinkhole
from farm.backends.docker_errors import translated
from farm.backends.hostprocs import kill_pids, sandbox_pids
from farm.errors import (
    DockerUnavailableError,
    ImageError,
    InfrastructureError,
    InputError,
    RuntimeMissingError,
)
from farm.host import POD_INIT_CONFIG, trace_config_current
from farm.sandbox import LogSink, SandboxResult, SandboxSpec
from farm.settings import BUILD_LABEL, HOME_LABEL, MANAGED_LABEL, Settings

CONTAINERD_SOCKET = Path("/run/docker/containerd/containerd.sock")
#: The sandbox's own deadline fires this long after farm's: farm normally kills the
#: sandbox at the deadline; the backstop ends it if farm itself died (SIGKILL, OOM).
BACKSTOP_GRACE_SECONDS = 20
#: What the backstop (pid 1, root inside gVisor) needs: to start the build as the
#: sandbox user, to drop the build's bounding set, and to kill it at the deadline.
BACKSTOP_CAPS = ["KILL", "SETUID", "SETGID", "SETPCAP"]


def backstop(spec: SandboxSpec, *, gvisor: bool) -> dict[str, Any]:
    """Docker's process arguments: the build's argv as the child of coreutils ``timeout``,
    the sandbox's pid 1, which kills it and so ends the sandbox a little after the
    deadline. Docker keeps a container running when its client dies, so without it a
    SIGKILLed farm would leave the build running forever.

    The build must not be able to stop its pid 1. Linux ignores SIGKILL and SIGSTOP sent
    to a pid namespace's init from inside, but gVisor delivers them, so under gVisor pid 1
    runs as root (in the sandbox, with only ``BACKSTOP_CAPS``) and ``setpriv`` starts the
    build as the sandbox user with no capabilities at all: a uid the build cannot signal
    or ptrace. Under ``--insecure-runtime=runc`` root would be the host's, so there pid 1
    is the sandbox user and the host kernel's init protection is what holds. Either way
    it overrides the image's ENTRYPOINT, as the Kubernetes backend's ``command`` does."""
    timeout = ["timeout", "-s", "KILL", str(spec.deadline_seconds + BACKSTOP_GRACE_SECONDS)]
    if not gvisor:
        return {"user": spec.user, "entrypoint": timeout, "command": spec.argv}
    uid, _, gid = spec.user.partition(":")
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"]
    drop += ["--inh-caps=-all", "--bounding-set=-all", "--"]
    caps, init = BACKSTOP_CAPS, []
    if spec.sinkhole:  # pid 1's child starts the resolver (port 53) beside the build
        caps, init = [*BACKSTOP_CAPS, "NET_BIND_SERVICE"], sinkhole.init_argv()
    return {
        "user": "0:0",
        "cap_add": caps,
        "entrypoint": [*timeout, *init, *drop],
        "command": spec.argv,
    }


class LocalBackend:
    name = "local"

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            with translated("connect to dockerd"):
                url = self.settings.docker_url or "unix:///var/run/docker.sock"
                # No ping: docker-py asks dockerd its API version when it connects, which
                # already fails here when dockerd is unreachable (one round trip, not two).
                self._client = docker.DockerClient(base_url=url, timeout=120)
        return self._client

    def preflight(self, spec: SandboxSpec) -> str:
        """Raises RuntimeMissingError or ImageError before anything is created."""
        runtime = self.settings.effective_runtime
        with translated("query dockerd"):
            runtimes = self.client.info().get("Runtimes", {})
        if runtime not in runtimes:
            raise RuntimeMissingError(
                f"dockerd has no {runtime!r} runtime (it has: {', '.join(sorted(runtimes))}); "
                "run `farm host setup`, or see `farm doctor`"
            )
        if self.settings.observing and not trace_config_current():
            # Another farm version's points would leave this classifier blind to some
            # attempts (or misread them): refuse rather than under-report.
            raise RuntimeMissingError(
                f"gVisor's trace configuration {POD_INIT_CONFIG} is not this farm's; "
                "run `farm host setup` (or build with --no-observe)"
            )
        return self.image_id(spec.image)

    def image_id(self, image: str) -> str:
        """The local image's id, in one dockerd call (a cache hit's key needs only this).

        Raises ImageError for the default image, InputError for another one."""
        try:
            with translated(f"look up image {image}"):
                return str(self.client.images.get(image).id)
        except ImageError as exc:
            if image == self.settings.default_image:
                raise
            raise InputError(f"image: {image!r} is not in dockerd; check --image") from exc

    def image_labels(self, image: str) -> dict[str, str] | None:
        """The labels of a local image (its toolchain facts: farm.ecosystems.cargo)."""
        with translated(f"look up image {image}"):
            return dict(self.client.images.get(image).labels or {})

    def run(
        self, spec: SandboxSpec, *, log: LogSink, on_created: Callable[[str], None]
    ) -> SandboxResult:
        with translated("create the sandbox"):
            container = self.client.containers.create(**self._create_args(spec))
        try:
            on_created(container.id)
            result = self._run_created(container, spec, log)
        except BaseException:
            self.teardown(container.id)
            raise
        began = time.monotonic()
        removed = self.teardown(container.id)
        elapsed = round(time.monotonic() - began, 3)
        return result.model_copy(update={"teardown": removed, "teardown_seconds": elapsed})

    def _run_created(self, container: Any, spec: SandboxSpec, log: LogSink) -> SandboxResult:
        # The image runs farm's pid 1 (`timeout`, `setpriv`) and then the build's command.
        with translated("start the sandbox (its image needs coreutils and util-linux)"):
            stream = container.attach(stdout=True, stderr=True, stream=True, logs=True)
            pump = threading.Thread(target=_pump, args=(stream, log), daemon=True)
            pump.start()
            started = datetime.now(UTC)
            container.start()
        exit_code, timed_out = self._wait(container, spec.deadline_seconds)
        pump.join(timeout=10)
        _close_stream(stream)
        with translated("inspect the sandbox"):
            container.reload()
        state = container.attrs["State"]
        return SandboxResult(
            container_id=container.id,
            runtime=self.settings.effective_runtime,
            exit_code=exit_code,
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            started_at=started,
            finished_at=datetime.now(UTC),
        )

    def _wait(self, container: Any, deadline: int) -> tuple[int | None, bool]:
        # The HTTP read timeout is the wall-clock deadline; on expiry the build is killed.
        # Any other error (dockerd went away) is an infrastructure error, not a deadline.
        started = time.monotonic()
        try:
            return int(container.wait(timeout=deadline)["StatusCode"]), False
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
            # docker-py reports a read timeout as either; only elapsed time tells them apart.
            if time.monotonic() - started < deadline - 1:
                raise DockerUnavailableError(f"lost dockerd while waiting: {exc}") from exc
        with translated("stop the sandbox after its deadline"):
            container.kill()
        return None, True

    def _create_args(self, spec: SandboxSpec) -> dict[str, Any]:
        return {
            "image": spec.image,
            **backstop(spec, gvisor=not self.settings.insecure_runtime),
            "name": spec.name,
            "labels": spec.labels,
            "environment": spec.env,
            "working_dir": spec.workdir,
            "hostname": spec.hostname,
            "runtime": self.settings.effective_runtime,
            "network_mode": spec.network,
            "read_only": spec.read_only_root,
            "mounts": [
                docker.types.Mount(m.target, str(m.source), type="bind", read_only=m.read_only)
                for m in spec.mounts
            ],
            "tmpfs": {t: f"size={size},mode=1777,nosuid,nodev" for t, size in spec.tmpfs.items()},
            "nano_cpus": int(spec.cpus * 1e9),
            "mem_limit": spec.memory,
            "memswap_limit": spec.memory,
            "pids_limit": spec.pids,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "ipc_mode": "private",
            # Docker's own copy of the log is capped too, so a flood cannot fill the disk.
            "log_config": docker.types.LogConfig(
                type="json-file", config={"max-size": str(spec.log_cap), "max-file": "1"}
            ),
        }

    def list_sandboxes(self) -> dict[str, str]:
        labels = [f"{MANAGED_LABEL}=true", f"{HOME_LABEL}={self.settings.home}"]
        with translated("list farm containers"):
            # A build ending meanwhile removes its container between docker-py's list and
            # its per-container inspect; that container is simply not live any more.
            found = self.client.containers.list(
                all=True, filters={"label": labels}, ignore_removed=True
            )
        return {c.id: c.labels.get(BUILD_LABEL, "") for c in found}

    def teardown(self, sandbox_id: str) -> list[str]:
        """Each step runs even if an earlier one failed; raises InfrastructureError after
        all of them if any failed, so a stuck sandbox is never reported as gone."""
        removed: list[str] = []
        failures: list[str] = []
        for step in (self._remove_container, _containerd_leftovers, _host_leftovers):
            try:
                removed += step(sandbox_id)
            except Exception as exc:
                failures.append(f"{step.__name__.strip('_')}: {exc}")
        if failures:
            raise InfrastructureError(
                f"teardown of {sandbox_id[:12]} incomplete ({'; '.join(failures)}); "
                "run `farm reap` once dockerd is healthy"
            )
        return removed

    def _remove_container(self, sandbox_id: str) -> list[str]:
        with translated(f"remove container {sandbox_id[:12]}"):
            try:
                self.client.api.remove_container(sandbox_id, force=True, v=True)
            except docker.errors.NotFound:
                return []
        return [f"container {sandbox_id[:12]}"]


def _host_leftovers(container_id: str) -> list[str]:
    return [f"host process {pid}" for pid in kill_pids(sandbox_pids(container_id))]


def _close_stream(stream: Any) -> None:
    # docker-py's stream close() leaves the HTTP response (and so the socket's fd)
    # open; a long-lived process (farm serve) would leak one socket per build.
    stream.close()
    response = getattr(stream, "_response", None)
    if response is not None:
        response.close()


def _pump(stream: Iterable[bytes], log: LogSink) -> None:
    try:
        for chunk in stream:
            log(chunk)
    except (requests.exceptions.RequestException, OSError):
        pass  # the container went away; its exit is reported by wait()


def _containerd_leftovers(container_id: str) -> list[str]:
    """When runsc fails at start, Docker forgets the container but containerd keeps a
    stopped task and its shim; remove both, by id."""
    ctr = shutil.which("ctr")
    if not ctr or not CONTAINERD_SOCKET.exists():
        return []
    base = [ctr, "--address", str(CONTAINERD_SOCKET), "--namespace", "moby"]
    removed = []
    for kind, args in (
        ("task", ["tasks", "delete", "--force"]),
        ("containerd", ["containers", "delete"]),
    ):
        done = subprocess.run([*base, *args, container_id], capture_output=True, timeout=30)
        if done.returncode == 0:
            removed.append(f"{kind} {container_id[:12]}")
    return removed

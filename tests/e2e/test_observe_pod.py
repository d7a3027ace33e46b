"""A Kubernetes pod under gVisor, with real runsc: one sandbox, several containers, one
trace connection, and the observer's per-container records.

containerd-shim-runsc-v1 runs a pod as one sandbox: ``runsc create`` of the pause
container (OCI annotation ``io.kubernetes.cri.container-type: sandbox``), then of each
container with ``container-type: container`` and ``io.kubernetes.cri.sandbox-id``
naming the pause, all with runsc's ``--pod-init-config`` (the shim's runsc.toml). This
test does exactly that with runsc itself (no containerd here), on bundles whose rootfs
is farm's own builder image, against a private observer daemon: the node monitor's.

The pause runs ``sleep``; the build writes to the read-only root, dials out, leaves a
background process behind and exits; the collector then opens files and dials out too.
runsc runs with a private ``--root``, ``--network=none`` and the systrap platform; only
this test's container ids are killed and deleted, and no runsc process of its
``--root`` may be left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from farm.backends.hostprocs import kill_pids, sandbox_pids
from farm.observe import pod_init_config
from farm.observe.classify import iter_actions
from farm.observe.daemon import HostObserver, ObserverDaemon, ObserverPaths
from farm.observe.spool import Observation, SpooledRecord
from farm.settings import DEFAULT_IMAGE, MANAGED_LABEL

RUNSC = shutil.which("runsc") or "/usr/bin/runsc"
TYPE, SANDBOX_ID = "io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id"

# Refused inside the sandbox: a write to the read-only root, and a loopback connect
# with nothing listening (there is no other network). The background sleep outlives
# the init, so gVisor kills it after the init's exit: its end belongs to the record.
BUILD = (
    "sleep 1000 & (echo x > /etc/evil) 2>/dev/null; (: <>/dev/tcp/127.0.0.1/9) 2>/dev/null; exit 3"
)
COLLECTOR = (
    "cat /etc/hostname /etc/os-release >/dev/null; (: <>/dev/tcp/127.0.0.1/10) 2>/dev/null; exit 0"
)
NAMESPACES = ("pid", "network", "ipc", "uts", "mount")


@pytest.fixture(scope="module")
def rootfs(client: docker.DockerClient) -> Iterator[Path]:
    """farm's builder image as a directory: ``docker export`` of a created (never
    started), labelled container, removed again by its id."""
    with tempfile.TemporaryDirectory(prefix="farm-pod-rootfs-") as d:
        root = Path(d) / "rootfs"
        root.mkdir()
        container = client.containers.create(
            DEFAULT_IMAGE, ["true"], labels={MANAGED_LABEL: "true"}, network_disabled=True
        )
        try:
            untar = subprocess.Popen(["tar", "-x", "-C", str(root)], stdin=subprocess.PIPE)
            assert untar.stdin is not None
            for chunk in container.export():
                untar.stdin.write(chunk)
            untar.stdin.close()
            assert untar.wait(300) == 0
        finally:
            container.remove(force=True)
        yield root


class Pod:
    """One sandbox and its containers, made with runsc as the shim makes them."""

    def __init__(self, work: Path, rootfs: Path, observer: ObserverPaths) -> None:
        self.work, self.rootfs = work, rootfs
        self.state = work / "state"
        self.config = work / "pod-init.json"
        self.config.write_text(json.dumps(pod_init_config(observer.socket)))
        self.log = (work / "runsc.log").open("ab")
        tag = uuid.uuid4().hex[:8]
        self.ids = {name: f"farm-e2e-{name}-{tag}" for name in ("pause", "build", "collector")}
        self.created: list[str] = []

    def runsc(self, *args: str, out: int | None = None) -> subprocess.CompletedProcess[bytes]:
        argv = [RUNSC, f"--root={self.state}", "--network=none", "--platform=systrap"]
        argv += [f"--pod-init-config={self.config}", *args]
        # Never a pipe to a sandbox: its processes would hold it open.
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out or self.log, stderr=self.log, timeout=120
        )

    def start(self, name: str, script: str) -> str:
        cid = self.ids[name]
        kind = "sandbox" if name == "pause" else "container"
        bundle = self.work / name
        bundle.mkdir()
        spec = {
            "ociVersion": "1.0.0",
            "root": {"path": str(self.rootfs), "readonly": True},
            "process": {
                "args": ["/bin/bash", "-c", script],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            ],
            "annotations": {TYPE: kind, SANDBOX_ID: self.ids["pause"]},
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
            },
        }
        (bundle / "config.json").write_text(json.dumps(spec))
        self.created.append(cid)
        assert self.runsc("create", f"--bundle={bundle}", cid).returncode == 0, self.logs()
        assert self.runsc("start", cid).returncode == 0, self.logs()
        return cid

    def wait(self, name: str) -> int:
        done = self.runsc("wait", self.ids[name], out=subprocess.PIPE)
        assert done.returncode == 0, self.logs()
        return int(json.loads(done.stdout)["exitStatus"])

    def status(self, name: str) -> str:
        done = self.runsc("state", self.ids[name], out=subprocess.PIPE)
        return str(json.loads(done.stdout)["status"]) if done.returncode == 0 else "gone"

    def logs(self) -> str:
        self.log.flush()
        return (self.work / "runsc.log").read_text(errors="replace")[-3000:]

    def remove(self) -> None:
        """Only this pod's containers, by id, the sandbox last; then nothing of its
        ``--root`` may run."""
        for cid in reversed(self.created):
            self.runsc("kill", cid, "KILL")
            self.runsc("delete", "--force", cid)
        self.log.close()
        left = sandbox_pids(str(self.state))
        kill_pids(left)  # by PID, only ours, then fail: a leak is a bug
        assert not left, f"runsc processes left behind: {left}"


@pytest.fixture
def observer() -> Iterator[ObserverPaths]:
    # Short: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="farm-pod-") as d:
        paths = ObserverPaths(socket=Path(d) / "observer.sock", spool=Path(d) / "spool")
        with ObserverDaemon(paths):
            yield paths


@pytest.fixture
def pod(rootfs: Path, observer: ObserverPaths) -> Iterator[Pod]:
    with tempfile.TemporaryDirectory(prefix="farm-pod-run-") as d:
        made = Pod(Path(d), rootfs, observer)
        try:
            yield made
        finally:
            made.remove()


def ended(source: HostObserver, container_id: str, timeout: float = 30) -> SpooledRecord:
    """The container's record, once it has ended, as the node monitor polls for it."""
    deadline = time.monotonic() + timeout
    while (record := source.poll(container_id)) is None:
        assert time.monotonic() < deadline, f"the record of {container_id} never ended"
        time.sleep(0.05)
    return record


def connects(seen: Observation) -> list[int]:
    """The ports of the record's TCP/IP connects (bash also connects unix sockets)."""
    addresses = [e.sockaddr() for e in seen.events if e.kind == "connect"]
    return [a.port for a in addresses if a and a.family == "inet"]


def test_each_container_of_a_real_gvisor_pod_gets_its_own_record(
    pod: Pod, observer: ObserverPaths
) -> None:
    source = HostObserver(observer)
    pause = pod.start("pause", "exec sleep 1000")
    build = pod.start("build", BUILD)
    assert pod.wait("build") == 3

    record = ended(source, build)
    # Over while its sandbox runs on: the pause is still up, the collector yet to come.
    assert pod.status("pause") == "running"
    assert source.poll(pause) is None
    seen = record.whole()
    actions = list(iter_actions(seen.events, {}))

    collector = pod.start("collector", COLLECTOR)
    assert pod.wait("collector") == 0
    gathered = ended(source, collector).whole()

    assert seen.complete and seen.lost == 0, seen.problem
    assert {e.container_id for e in seen.events} == {build}
    assert seen.events[0].kind == "container_start"
    assert connects(seen) == [9]  # its own connect, and not the collector's
    assert {(a.kind, a.target) for a in actions} >= {
        ("network", "127.0.0.1:9"),
        ("fs_write_denied", "/etc/evil"),
    }
    assert not any("127.0.0.1:10" in a.target for a in actions)
    # The background sleep was killed after the init's exit, and the record has that.
    exits = [e for e in seen.events if e.kind == "task_exit"]
    init = seen.events[0].context.thread_id
    killed = exits[-1]
    assert killed.context.thread_id != init and killed.fields.get("exit_status") == 9

    assert gathered.complete and {e.container_id for e in gathered.events} == {collector}
    assert connects(gathered) == [10]
    opened = {e.fields.get("fd_path") or e.fields.get("pathname") for e in gathered.events}
    assert "/etc/hostname" in opened
    assert pod.status("pause") == "running"

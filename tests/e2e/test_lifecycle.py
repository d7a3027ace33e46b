"""Teardown, caps and bad input, against real dockerd and runsc."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.backends.local import LocalBackend
from farm.errors import RuntimeMissingError
from farm.records import Status
from farm.runner import Runner
from farm.settings import DEFAULT_IMAGE, MANAGED_LABEL, Settings
from farm.spec import build_spec
from farm.store import Store

from .conftest import (
    created,
    farm,
    farm_containers,
    farm_env,
    farm_json,
    kill_cli_once_running,
    wait_for,
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    (p / "input.txt").write_text("data\n")
    return p


def spec_file(project: Path, name: str, **fields: object) -> Path:
    """A JSON BuildSpec for ``project`` next to it, with ``fields`` on top."""
    path = project.parent / f"{name}.json"
    path.write_text(json.dumps({"source": str(project), **fields}))
    return path


def test_failed_build_is_torn_down(home: Path, project: Path) -> None:
    code, out = farm_json(home, "build", str(project), "--", "sh", "-c", "echo bye; exit 3")
    assert code == 1
    assert out["status"] == "failed" and out["exit_code"] == 3
    assert not (home / "work" / out["id"]).exists()


def test_deadline_kills_the_build(home: Path, project: Path) -> None:
    code, out = farm_json(home, "build", str(project), "--timeout", "3", "--", "sleep", "300")
    assert code == 1 and out["status"] == "timed_out"
    assert out["duration_seconds"] < 60


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_cli_tears_down(home: Path, project: Path, client, sig) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "build", str(project), "--", "sleep", "300"],
        env=farm_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = wait_for(
        lambda: [c for c in farm_containers(client, home) if c.status == "running"],
        what="sandbox to start",
    )
    cli.send_signal(sig)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 1, err
    assert "interrupted" in err
    assert farm_containers(client, home) == []
    record = Store(home).list()[0]
    assert record.status is Status.CANCELLED and record.container_id == running[0].id


def test_killed_cli_leaves_a_sandbox_that_the_next_run_reaps(
    home: Path, project: Path, client
) -> None:
    kill_cli_once_running(client, home, str(project), "--", "sleep", "300")
    assert farm_containers(client, home), "docker keeps the container when its client dies"
    done = farm(home, "reap")
    assert done.returncode == 0 and "reaped build" in done.stdout, done.stdout + done.stderr
    assert farm_containers(client, home) == []
    assert Store(home).list()[0].status is Status.LOST


def test_invalid_spec_creates_nothing(home: Path, project: Path, client) -> None:
    since = time.time()
    done = farm(home, "build", str(project), "--output", "../x", "--memory", "lots", "--", "true")
    assert done.returncode == 2
    assert "outputs[0]: '../x' escapes the output directory" in done.stderr
    assert "resources.memory: 'lots' is not a size" in done.stderr
    # dockerd's own event log, not a count of all containers: other tests may run alongside.
    assert created(client, home, since) == []
    assert farm_containers(client, home) == []
    assert not (home / "work").exists() or not any((home / "work").iterdir())


def test_missing_runtime_is_a_clear_error_before_anything_exists(
    home: Path,
    project: Path,
    client,
) -> None:
    settings = Settings(home=home, runtime="runsc-not-installed", observe=False)
    runner = Runner(settings, LocalBackend(settings), Store(home))
    spec = build_spec({"source": str(project), "argv": ["true"]})
    with pytest.raises(RuntimeMissingError, match=r"no 'runsc-not-installed(-observed)?' runtime"):
        runner.build(spec)
    assert Store(home).list() == []
    assert farm_containers(client, home) == []


def test_insecure_runtime_is_loud_and_recorded(home: Path, project: Path) -> None:
    done = farm(home, "build", str(project), "--insecure-runtime=runc", "--json", "--", "true")
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "WITHOUT gVisor" in done.stderr
    record = Store(home).get(json.loads(done.stdout)["id"])
    assert record.insecure_runtime and record.runtime == "runc"
    assert any(n.startswith("INSECURE") for n in record.notes)


def test_log_flood_is_capped(home: Path, project: Path) -> None:
    spec = spec_file(project, "flood", limits={"log": "64k"})
    flood = "head -c 50000000 /dev/zero | tr '\\0' x; echo done"
    code, out = farm_json(home, "build", "--spec", str(spec), "--", "sh", "-c", flood)
    assert code == 0
    record = Store(home).get(out["id"])
    assert record.log_bytes == 64 * 1024 and record.log_truncated_bytes > 40_000_000
    log = farm(home, "logs", out["id"]).stdout
    assert len(log) < 70 * 1024 and "log truncated at 65536 bytes" in log


def test_oversized_and_linked_outputs_are_refused(home: Path, project: Path) -> None:
    script = (
        "head -c 3000000 /dev/zero > /out/big; ln -s /etc/passwd /out/link; echo ok > /out/small"
    )
    code, out = farm_json(
        home,
        "build",
        str(project),
        "--output",
        "out/**",
        "--",
        "sh",
        "-c",
        script,
    )
    record = Store(home).get(out["id"])
    assert code == 1 and record.status is Status.FAILED  # the build fails, nothing published
    reasons = {r.path: r.reason for r in record.refused}
    assert "per-file cap" not in reasons.get("out/big", "")  # default cap is 512 MiB
    assert reasons["out/link"].startswith("symlink")
    assert record.artifacts == []

    spec = spec_file(project, "caps", limits={"max_file": "1m"})
    code, out = farm_json(
        home,
        "build",
        "--spec",
        str(spec),
        "--output",
        "out/big",
        "--",
        "sh",
        "-c",
        "head -c 3000000 /dev/zero > /out/big",
    )
    record = Store(home).get(out["id"])
    assert code == 1 and "exceeds the per-file cap of 1048576" in record.refused[0].reason


def test_start_failure_leaves_no_containerd_task_or_runsc(
    home: Path, project: Path, client, tmp_path: Path
) -> None:
    # runsc fails at start; Docker forgets the container but containerd keeps it. The
    # sandbox's pid 1 is the image's `timeout` (farm.backends.local.backstop): an image
    # without it fails at start, as a missing command did before.
    image = empty_image(client, tmp_path)
    try:
        done = farm(
            home, "build", str(project), "--image", image, "--", "true", FARM_ALLOWED_IMAGES=image
        )
    finally:
        client.images.remove(image, force=True)
    assert done.returncode == 2
    assert "needs coreutils" in done.stderr and "the command is not in the image" in done.stderr
    assert 'finding executable "timeout"' in done.stderr
    record = Store(home).list()[0]
    assert record.status is Status.FAILED
    ctr = subprocess.run(
        [
            "ctr",
            "--address",
            "/run/docker/containerd/containerd.sock",
            "-n",
            "moby",
            "containers",
            "ls",
            "-q",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert record.container_id not in ctr.stdout


def empty_image(client, tmp_path: Path) -> str:
    """An image with nothing but /etc/passwd, labelled farm-managed; returns its name
    (a name, not an id: the image allowlist admits images by reference only)."""
    name = f"farm-test/empty:{tmp_path.name.lower()}"
    root = tmp_path / "empty-root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/:/nonexistent\n")
    tarball = tmp_path / "empty.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
    subprocess.run(
        ["docker", "import", "-c", f"LABEL {MANAGED_LABEL}=true", str(tarball), name],
        capture_output=True,
        text=True,
        check=True,
    )
    return name


def test_policy_as_seen_from_inside(home: Path, project: Path) -> None:
    probe = (
        "echo uid=$(id -u) gid=$(id -g); grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status;"
        " echo nets=$(awk -F: 'NR>2{print $1}' /proc/net/dev | tr -d ' ' | tr '\\n' ,);"
        " echo tmpkb=$(df -k /tmp | awk 'NR==2{print $2}');"
        " touch /src/x 2>/dev/null; echo src=$?; touch /usr/x 2>/dev/null; echo root=$?;"
        " touch /out/x /build/target/x; echo writable=$?; ls /var/run/docker.sock 2>/dev/null;"
        " echo sock=$?; env | sort"
    )
    spec = spec_file(project, "probe", resources={"scratch": "64m"})
    code, out = farm_json(
        home,
        "build",
        "--spec",
        str(spec),
        "--mode",
        "audit",  # the probe's touch attempts would quarantine it in enforce mode
        "--",
        "sh",
        "-c",
        probe,
        FARM_HOST_ONLY="leak-me",
    )
    assert code == 0, out
    # gVisor's record has the two refused writes, from the host's point of view.
    writes = {(a["kind"], a["target"]) for a in out["blocked_actions"]}
    assert {("fs_write_denied", "/src/x"), ("fs_write_denied", "/usr/x")} <= writes
    log = farm(home, "logs", out["id"]).stdout
    assert "uid=10001 gid=10001" in log
    # gVisor does not report NoNewPrivs; tests/unit/test_local_backend.py checks the flag.
    assert "CapEff:\t0000000000000000" in log and "CapBnd:\t0000000000000000" in log
    assert "nets=lo," in log  # loopback only: no interface leads anywhere
    assert "tmpkb=65536" in log
    assert "src=1" in log and "root=1" in log and "writable=0" in log and "sock=2" in log
    assert "leak-me" not in log and "FARM_HOST_ONLY" not in log
    assert "TZ=UTC" in log and "SOURCE_DATE_EPOCH=1700000000" in log


def test_follow_streams_the_log(home: Path, project: Path) -> None:
    done = farm(home, "build", str(project), "--follow", "--", "echo", "streamed-line")
    assert done.returncode == 0, done.stderr
    assert "streamed-line" in done.stdout.splitlines()[0]


def test_memory_bomb_is_contained(home: Path, project: Path, client) -> None:
    spec = spec_file(project, "oom", resources={"memory": "256m"})
    # tail keeps the whole newline-free stream in memory.
    code, out = farm_json(
        home,
        "build",
        "--spec",
        str(spec),
        "--",
        "sh",
        "-c",
        "head -c 1500000000 /dev/zero | tail -n 1 | wc -c",
    )
    assert code == 1
    assert out["status"] == "oom_killed" and out["exit_code"] == 137
    assert farm_containers(client, home) == []


def test_missing_image_is_a_clear_error_before_anything_exists(
    home: Path, project: Path, client
) -> None:
    allowed = f"{DEFAULT_IMAGE},farm/not-built:1"  # allowed, so that dockerd is asked
    done = farm(
        home,
        "build",
        str(project),
        "--image",
        "farm/not-built:1",
        "--",
        "true",
        FARM_ALLOWED_IMAGES=allowed,
    )
    assert done.returncode == 2
    assert "image: 'farm/not-built:1' is not in dockerd; check --image" in done.stderr
    assert farm_containers(client, home) == []
    assert Store(home).list() == []

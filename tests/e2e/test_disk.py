"""resources.disk against real dockerd and runsc: a build that writes past its cap fails
with a note, the host holds no more than the cap, and nothing stays mounted or attached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.records import Status
from farm.store import Store
from farm.workdisk import create, loops_below, mounts_below

from .conftest import farm, farm_containers, farm_env, farm_json, kill_cli_once_running, wait_for

CAP = 64 << 20


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    (p / "input.txt").write_text("data\n")
    return p


def attached(home: Path) -> list[str]:
    """Mounts and loop devices of this FARM_HOME: farm.workdisk's view, and independently
    what mountinfo and `losetup --list` say."""
    base = os.path.realpath(home)
    with open("/proc/self/mountinfo") as table:
        mounted = [line.split()[4] for line in table if base in line.split()[4]]
    listed = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
    ).stdout
    loops = [line for line in listed.splitlines() if base in line]
    ours = [str(p) for p in mounts_below(home)] + loops_below(home)
    return sorted(set(mounted + loops + ours))


def allocated_below(root: Path) -> int:
    """Bytes the host's filesystem really holds for ``root`` (sparse files count as
    written), not crossing into the build's own mounted filesystem."""
    done = subprocess.run(["du", "-s", "-x", "-B1", str(root)], capture_output=True, text=True)
    return int(done.stdout.split()[0])


@pytest.mark.parametrize("where", ["/out", "/build/target"])
def test_writing_past_the_cap_fails_and_the_host_holds_no_more(
    home: Path, project: Path, client, where: str
) -> None:
    # A hostile build ignores its write errors and exits 0; it waits for the host's "go"
    # so the host can look at what it wrote while the sandbox still runs.
    script = (
        f"head -c 200m /dev/zero > {where}/big; echo write-exit=$?; "
        f"touch {where}/done; while [ ! -e /out/go ]; do sleep 0.1; done; exit 0"
    )
    argv = ["build", str(project), "--disk", "64m", "--no-cache", "--", "sh", "-c", script]
    cli = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", *argv],
        env=farm_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    work = home / "work"
    done = wait_for(
        lambda: [p for p in work.glob(f"*/disk/{where.rsplit('/', 1)[1]}/done")],
        timeout=600,
        what="the build to fill its disk",
    )[0]
    root = done.parents[2]
    # Host side: the image holds at most the cap, and nothing else of the build grew.
    assert os.stat(root / "disk.img").st_size == CAP
    assert os.stat(root / "disk.img").st_blocks * 512 <= CAP
    assert allocated_below(root) <= CAP + (1 << 20)  # + the build's log and dirs
    big = done.parent / "big"
    assert 40 << 20 < big.stat().st_size < CAP, "the write stopped at the cap"
    (root / "disk" / "out" / "go").touch()
    output, _ = cli.communicate(timeout=600)
    assert cli.returncode == 1, output
    assert "disk limit 64m reached" in output
    record = Store(home).get(root.name)
    assert record.status is Status.FAILED and record.exit_code == 0
    assert any(n.startswith("disk limit 64m reached") for n in record.notes)
    assert record.artifacts == []
    log = farm(home, "logs", record.id).stdout
    assert "write-exit=1" in log and "No space left on device" in log
    # Nothing of the build remains: no mount, no loop device, no work dir.
    assert attached(home) == []
    assert not root.exists()


def test_a_build_under_the_cap_succeeds_and_its_outputs_are_collected(
    home: Path, project: Path
) -> None:
    script = "head -c 20m /dev/urandom > /out/a && head -c 5m /dev/zero > /build/target/b"
    code, out = farm_json(
        home, "build", str(project), "--disk", "64m", "--output", "out/a",
        "--output", "target/b", "--", "sh", "-c", script,
    )  # fmt: skip
    assert code == 0, out
    sizes = {a["path"]: a["size"] for a in out["artifacts"]}
    assert sizes == {"out/a": 20 << 20, "target/b": 5 << 20}
    assert not any("disk limit" in n for n in Store(home).get(out["id"]).notes)
    assert attached(home) == []


def test_too_many_files_is_the_cap_too(home: Path, project: Path) -> None:
    """Inodes run out before bytes do: still ENOSPC, still the disk limit."""
    script = "cd /out && i=0; while : > f$i; do i=$((i+1)); done; echo made=$i; exit 0"
    code, out = farm_json(home, "build", str(project), "--disk", "64m", "--", "sh", "-c", script)
    assert code == 1 and out["status"] == "failed", out
    record = Store(home).get(out["id"])
    assert any(n.startswith("disk limit 64m reached") for n in record.notes), record.notes
    assert attached(home) == []


def test_bad_disk_cap_is_refused_before_anything_exists(home: Path, project: Path, client) -> None:
    for bad in ("10m", "lots", "2t"):
        done = farm(home, "build", str(project), "--disk", bad, "--", "true")
        assert done.returncode == 2, done.stderr
        assert "resources.disk: " in done.stderr
    assert farm_containers(client, home) == []
    assert not (home / "work").exists() or not any((home / "work").iterdir())
    assert attached(home) == []


def test_a_source_over_the_cap_is_refused_before_a_sandbox_exists(
    home: Path, project: Path, client
) -> None:
    """The snapshot copies apparent bytes: a 1 GiB sparse file is 0 bytes in the tree and
    would be 1 GiB on the host. The cap bounds the source as it bounds the build."""
    with (project / "sparse.bin").open("wb") as fh:
        fh.truncate(1 << 30)
    done = farm(home, "build", str(project), "--disk", "64m", "--no-cache", "--", "true")
    assert done.returncode == 2, done.stderr
    assert "more than 64m of file contents (at sparse.bin)" in done.stderr
    assert farm_containers(client, home) == []
    assert attached(home) == []


def test_reap_releases_a_killed_builds_filesystem(home: Path, project: Path, client) -> None:
    kill_cli_once_running(client, home, str(project), "--", "sleep", "300")  # no unmount
    assert attached(home), "a killed run leaves its filesystem mounted"
    done = farm(home, "reap")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mount " in done.stdout
    assert attached(home) == []
    assert farm_containers(client, home) == []
    assert not any((home / "work").iterdir())


def test_reap_releases_a_filesystem_without_a_running_record(home: Path) -> None:
    """A filesystem whose record is gone (or final) is a leftover too: found by path."""
    root = home / "work" / "20260101-000000-abcdef"
    root.mkdir(parents=True)
    create(root / "disk.img", root / "disk", CAP)
    assert len(attached(home)) == 3  # the mount, and its loop device in both views
    done = farm(home, "reap")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reaped leftover filesystem of build 20260101-000000-abcdef" in done.stdout
    assert attached(home) == []
    assert not root.exists()

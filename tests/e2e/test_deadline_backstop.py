"""A SIGKILLed `farm` leaves no sandbox running past its deadline: each container ends
itself (a `timeout` as the sandbox's pid 1), even when the build tries to stop that, and
`farm reap` removes what is left. Real dockerd and runsc; the witness is docker's view of
the container, polled from the host."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from farm.backends.local import BACKSTOP_GRACE_SECONDS
from farm.records import Status
from farm.store import Store

from .conftest import farm, farm_containers, kill_cli_once_running, wait_for

TIMEOUT = 5
#: The build tries to take its pid 1 (the backstop) out first: stop it (gVisor, unlike
#: Linux, would deliver SIGSTOP to init from inside), kill it, or ptrace it (perl's raw
#: syscall: PTRACE_ATTACH to pid 1). Each must fail: pid 1 is a uid the build is not.
DEFEND = (
    "trap '' TERM HUP INT; "
    "for s in STOP TSTP KILL TERM HUP INT ALRM; do kill -$s 1 && echo signalled $s; done; "
    "perl -e 'syscall(101, 16, 1, 0, 0) == 0 and print qq(ptraced\\n)'; "
    "grep -q '^State:.*T' /proc/1/status && echo stopped; exec sleep 1000"
)


@pytest.mark.parametrize(
    "argv", [["sleep", "1000"], ["sh", "-c", DEFEND]], ids=["sleep", "fights-back"]
)
def test_a_sandbox_ends_itself_after_its_deadline_when_farm_is_killed(
    home: Path, tmp_path: Path, client: docker.DockerClient, argv: list[str]
) -> None:
    src = tmp_path / "proj"
    src.mkdir()
    running = kill_cli_once_running(client, home, str(src), "--timeout", str(TIMEOUT), "--", *argv)
    try:
        # Nobody is left to stop it but the sandbox itself: poll docker, bounded.
        bound = TIMEOUT + BACKSTOP_GRACE_SECONDS + 120
        state = wait_for(
            lambda: _stopped(client, running.id), timeout=bound, what="the sandbox to end itself"
        )
        assert state["ExitCode"] == 137 and not state["OOMKilled"]  # the backstop's SIGKILL
        log = client.api.logs(running.id).decode()
        assert not any(word in log for word in ("signalled", "ptraced", "stopped")), log
    finally:
        done = farm(home, "reap")  # removes the container by id and the work dir
    assert done.returncode == 0 and "reaped build" in done.stdout, done.stdout + done.stderr
    assert farm_containers(client, home) == []
    assert Store(home).list()[0].status is Status.LOST


def _stopped(client: docker.DockerClient, container_id: str) -> dict | None:
    state = client.api.inspect_container(container_id)["State"]
    return None if state["Running"] else state


def test_a_command_missing_from_the_image_fails_the_build_and_says_so(
    home: Path, tmp_path: Path
) -> None:
    """With the backstop as pid 1 the sandbox starts, and the missing command is the
    build's failure (exit 127, as a shell says), named in its log."""
    src = tmp_path / "proj"
    src.mkdir()
    done = farm(home, "build", str(src), "--json", "--", "no-such-command")
    assert done.returncode == 1, done.stderr
    record = Store(home).list()[0]
    assert record.status is Status.FAILED and record.exit_code == 127
    log = farm(home, "logs", record.id).stdout
    assert "failed to execute no-such-command: No such file or directory" in log, log

"""The sinkhole resolver in real gVisor sandboxes: the build resolves through it, and can
neither stop it, forge its log, replace resolv.conf nor run a resolver of its own.
(tests/e2e/test_attacks.py's dns-attack covers attribution and the report.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import farm, farm_json


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    src.mkdir()
    (src / "README").write_text("not a cargo project\n")
    return src


HOSTILE = (
    "pid=$(cut -d' ' -f1 /farm/dns/ready); echo resolver=$pid; "
    'kill -KILL "$pid"; echo kill=$?; '
    "echo '9\tforged.example' >> /farm/dns/names; echo forge=$?; "
    "echo 'nameserver 192.0.2.1' > /etc/resolv.conf; echo resolv=$?; "
    # gVisor lets any uid bind a low port, so what holds is that the resolver has
    # bound 53 before the build's first process starts.
    "/usr/bin/perl /farm/sinkhole-resolver.pl 127.0.0.1 53 /tmp 0; echo own=$?; "
    "getent hosts after.example; echo lookup=$?"
)


def test_the_build_cannot_stop_forge_or_replace_the_resolver(
    home: Path, project: Path, client
) -> None:
    code, out = farm_json(
        home,
        "build",
        str(project),
        "--mode",
        "audit",
        "--timeout",
        "120",
        "--",
        "bash",
        "-c",
        HOSTILE,
    )
    assert code == 0, out
    log = farm(home, "logs", out["id"]).stdout
    assert "kill=1" in log and "forge=1" in log and "resolv=1" in log
    assert "bind 127.0.0.1:53: Address already in use" in log and "own=98" in log
    assert "2001:2::1       after.example" in log and "lookup=0" in log
    report = json.loads(farm(home, "report", out["id"], "--json").stdout)
    resolves = [
        (a["target"], a["executable"]) for a in report["actions"] if a["operation"] == "resolve"
    ]
    # forged.example never reached the record; the name is the process's that asked
    assert resolves == [("after.example", "/usr/bin/getent")]


def test_a_build_that_resolves_nothing_records_nothing(home: Path, project: Path, client) -> None:
    code, out = farm_json(
        home, "build", str(project), "--", "sh", "-c", "cat /etc/resolv.conf; echo ok > /out/ok"
    )
    assert (code, out["status"], out["blocked_actions"]) == (0, "succeeded", [])
    assert farm(home, "logs", out["id"]).stdout.startswith("nameserver 127.0.0.1\n")

"""Honeytokens in real gVisor builds: farm plants fake credentials in every sandbox; a
build that reads them is flagged high, one that uses their values in a later action or
copies them into an output is exfiltrating, and no stored byte holds them in clear."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from .conftest import farm, farm_json

#: The shapes of every planted token (farm.honeytokens): nothing under FARM_HOME may
#: match one after a build, whatever the build printed, wrote or tried.
CLEAR = re.compile(
    rb"AKIA[A-Z2-7]{16}|cio[A-Za-z0-9]{32}|ghp_[A-Za-z0-9]{36}|BEGIN OPENSSH PRIVATE KEY"
    rb"|b3BlbnNzaC1rZXktdjE"  # the base64 of "openssh-key-v1", any key's first bytes
)
#: Reads every planted file into the log, prints the AWS variables, then uses the key id
#: in a path (a recorded action), and leaves the rest of the tokens where it is told.
STEAL = (
    "cat $HOME/.ssh/id_ed25519 $HOME/.aws/credentials $HOME/.cargo/credentials.toml "
    "$HOME/.git-credentials; "
    'echo "ID=$AWS_ACCESS_KEY_ID SECRET=$AWS_SECRET_ACCESS_KEY"; '
    'touch "/usr/bin/$AWS_ACCESS_KEY_ID" 2>/dev/null; '
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    src.mkdir()
    (src / "README").write_text("not a cargo project\n")
    return src


def build(home: Path, project: Path, script: str) -> tuple[int, dict]:
    return farm_json(home, "build", str(project), "--mode", "audit", "--", "sh", "-c", script)


def no_token_in_clear(home: Path) -> int:
    """Every file under FARM_HOME, and inside each signed envelope its payload and the
    payload's base64 byproducts, holds no token. Returns how many envelopes it opened."""
    envelopes = 0
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not CLEAR.search(data), f"a token in clear in {path}"
            inner = decoded(data)
            envelopes += bool(inner)
            for part in inner:
                assert not CLEAR.search(part), f"a token in clear inside {path}"
    return envelopes


def decoded(data: bytes) -> list[bytes]:
    try:
        envelope = json.loads(data)
        payload = base64.b64decode(envelope["payload"])
    except (ValueError, KeyError, TypeError):
        return []
    contents = [
        base64.b64decode(b["content"])
        for b in json.loads(payload)["predicate"]["runDetails"]["byproducts"]
        if "content" in b
    ]
    return [payload, *contents]


def report(home: Path, build_id: str) -> dict:
    done = farm(home, "report", build_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_reads_and_leaks_are_flagged_and_redacted(home: Path, project: Path, client) -> None:
    code, out = build(home, project, STEAL + "echo done > /out/ok")
    assert code == 0 and out["status"] == "succeeded", out
    rep = report(home, out["id"])
    verdict = rep["honeytokens"]
    assert verdict["planted"] == ["ssh", "aws", "cargo", "git"]
    assert verdict["read"] == ["aws", "cargo", "git", "ssh"]
    assert verdict["exfiltrated"] == ["aws"] and verdict["in_artifacts"] == []
    reads = {
        (a["target"], a["honeytoken"], a["severity"])
        for a in rep["actions"]
        if a["kind"] == "sensitive_read"
    }
    assert reads == {
        ("/tmp/home/.ssh/id_ed25519", "ssh", "high"),
        ("/tmp/home/.aws/credentials", "aws", "high"),
        ("/tmp/home/.cargo/credentials.toml", "cargo", "high"),
        ("/tmp/home/.git-credentials", "git", "high"),
    }
    leaks = [a for a in rep["actions"] if a["exfiltrated"]]
    assert [(a["kind"], a["target"], a["severity"]) for a in leaks] == [
        ("fs_write_denied", "/usr/bin/[honeytoken:aws]", "high")
    ]
    log = farm(home, "logs", out["id"]).stdout
    assert "[honeytoken:ssh]" in log and "[honeytoken:cargo]" in log
    assert "[honeytoken:git]" in log
    assert "ID=[honeytoken:aws] SECRET=[honeytoken:aws]" in log
    assert "aws_access_key_id = [honeytoken:aws]" in log
    human = farm(home, "report", out["id"]).stdout
    assert "EXFILTRATION: planted aws credentials in later actions" in human
    assert "HONEYTOKENS READ (severity high): aws, cargo, git, ssh" in human
    # Signed provenance lists the redacted actions.
    assert farm(home, "provenance", out["id"]).returncode == 0
    assert no_token_in_clear(home) == 1


@pytest.mark.parametrize("token", ["$HOME/.ssh/id_ed25519", "$HOME/.cargo/credentials.toml"])
def test_an_output_holding_a_token_is_refused(
    home: Path, project: Path, client, token: str
) -> None:
    code, out = build(home, project, f"cat {token} > /out/stolen; echo fine > /out/ok")
    assert code == 1 and out["status"] == "failed", out
    assert out["artifacts"] == []
    rep = report(home, out["id"])
    kind = "ssh" if ".ssh" in token else "cargo"
    assert rep["honeytokens"]["in_artifacts"] == [kind]
    show = farm(home, "show", out["id"]).stdout
    assert f"contains the planted {kind} honeytoken" in show
    no_token_in_clear(home)


def test_a_clean_build_is_not_flagged(home: Path, project: Path, client) -> None:
    code, out = build(home, project, "ls -a $HOME > /out/listing; echo ok")
    assert code == 0 and out["status"] == "succeeded", out
    rep = report(home, out["id"])
    assert rep["honeytokens"] == {
        "planted": ["ssh", "aws", "cargo", "git"],
        "read": [],
        "exfiltrated": [],
        "in_artifacts": [],
    }
    assert rep["actions"] == []

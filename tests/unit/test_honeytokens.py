"""farm.honeytokens: the fake credentials' formats, the streaming redaction of a log at
every chunk boundary, the marking of reads and leaks, and the scan of outputs."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from farm import honeytokens
from farm.errors import SpecError
from farm.honeytokens import Finder, Honeytokens, Marker, Redactor, found_in_file, plant
from farm.observe.classify import BlockedAction
from farm.sandbox import SandboxSpec
from farm.spec import build_spec


@pytest.fixture(scope="module")
def tokens() -> Honeytokens:
    return Honeytokens.generate()


def test_formats_look_real_and_are_fresh(tokens: Honeytokens) -> None:
    assert re.fullmatch(r"AKIA[A-Z2-7]{16}", tokens.aws_key_id)
    assert re.fullmatch(r"[A-Za-z0-9+/]{40}", tokens.aws_secret)
    assert re.fullmatch(r"cio[A-Za-z0-9]{32}", tokens.cargo_token)
    assert re.fullmatch(r"ghp_[A-Za-z0-9]{36}", tokens.git_token)
    assert tokens.ssh_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    other = Honeytokens.generate()
    assert {v for _, v in tokens.needles()}.isdisjoint(v for _, v in other.needles())


def test_ssh_needles_leave_out_what_every_key_shares(tokens: Honeytokens) -> None:
    shared = set(Honeytokens.generate().ssh_key.splitlines())
    lines = [v for k, v in tokens.needles() if k == "ssh" and "\n" not in v]
    assert lines and not shared.intersection(lines)


def redacted(tokens: Honeytokens, text: bytes, split: int) -> bytes:
    out: list[bytes] = []
    r = Redactor(Finder(tokens), out.append)
    r.write(text[:split])
    r.write(text[split:])
    r.close()
    return b"".join(out)


def test_log_is_redacted_whatever_the_chunk_boundary(tokens: Honeytokens) -> None:
    text = (
        f"hello\n{tokens.ssh_key}then {tokens.aws_key_id}:{tokens.aws_secret} "
        f"{tokens.cargo_token} {tokens.git_token.upper()} bye\n"
    ).encode()
    want = (
        b"hello\n[honeytoken:ssh]\nthen [honeytoken:aws]:[honeytoken:aws] "
        b"[honeytoken:cargo] [honeytoken:git] bye\n"
    )
    for split in range(len(text) + 1):
        assert redacted(tokens, text, split) == want, split


def test_a_fragment_of_the_key_is_redacted(tokens: Honeytokens) -> None:
    line = tokens.ssh_key.splitlines()[2]
    assert redacted(tokens, f"x {line} y".encode(), 3) == b"x [honeytoken:ssh] y"


def test_clean_output_passes_unchanged(tokens: Honeytokens) -> None:
    text = b"Compiling serde v1.0.152\n" * 100
    assert redacted(tokens, text, 7) == text


def action(**fields: object) -> BlockedAction:
    base = {"kind": "network", "operation": "connect", "target": "127.0.0.1:9", "errno": ""}
    base |= {"time_ns": 1, "pid": 2, "process_name": "sh", "executable": "/bin/sh"}
    return BlockedAction.model_validate({**base, "argv": ["sh"], **fields})


def test_reading_a_planted_file_is_high_severity(tokens: Honeytokens) -> None:
    marker = Marker(Finder(tokens))
    read = action(kind="sensitive_read", operation="open", target="/tmp/home/.aws/credentials")
    other = action(kind="sensitive_read", operation="open", target="/root/.aws/credentials")
    got = list(marker.mark([read, other]))
    assert (got[0].honeytoken, got[0].severity) == ("aws", "high")
    assert "[honeytoken aws: severity high]" in got[0].line()
    assert got[1].honeytoken is None and got[1].severity is None
    assert marker.read == {"aws"} and not marker.exfiltrated


def test_a_token_in_a_later_action_is_exfiltration_and_redacted(tokens: Honeytokens) -> None:
    marker = Marker(Finder(tokens))
    leak = action(argv=["curl", f"-H{tokens.aws_secret}"], target=f"/usr/bin/{tokens.git_token}")
    named = action(address=f"{tokens.aws_key_id.lower()}.exfil.example.net")
    got = list(marker.mark([leak, named, action()]))
    assert got[0].exfiltrated == "aws,git" and got[0].severity == "high"
    assert got[0].argv == ["curl", "-H[honeytoken:aws]"]
    assert got[0].target == "/usr/bin/[honeytoken:git]"
    assert got[1].address == "[honeytoken:aws].exfil.example.net"
    assert got[2].exfiltrated is None and got[2].address is None
    dumped = "".join(a.model_dump_json() for a in got).lower()
    assert all(v.lower() not in dumped for _, v in tokens.needles())
    assert marker.exfiltrated == {"aws", "git"} and marker.leaks == 2


def test_outputs_are_scanned_across_read_chunks(tokens: Honeytokens, tmp_path: Path) -> None:
    finder = Finder(tokens)
    out = tmp_path / "blob"
    # The token straddles the boundary between two chunks of the scan.
    start = honeytokens.SCAN_CHUNK - 10
    out.write_bytes(b"\0" * start + tokens.cargo_token.encode() + b"\0" * 100)
    assert found_in_file(out, finder) == "cargo"
    out.write_bytes(b"\0" * (honeytokens.SCAN_CHUNK + 100))
    assert found_in_file(out, finder) is None


def test_the_output_scan_finds_what_the_regex_finds(tokens: Honeytokens) -> None:
    """found_in_file's fast scan agrees with the case-insensitive regex: any case, any
    position, the leftmost needle first, and nothing in clean bytes."""
    finder = Finder(tokens)
    rng = random.Random(14)
    needles = tokens.needles()
    for _ in range(200):
        _, value = rng.choice(needles)
        spelled = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in value)
        data = bytearray(rng.randbytes(rng.randrange(0, 4096)))
        at = rng.randrange(0, len(data) + 1)
        data[at:at] = spelled.encode()
        if rng.random() < 0.3:  # a second needle before or after the first
            other = rng.choice(needles)[1].encode()
            where = rng.randrange(0, len(data) + 1)
            data[where:where] = other
        match = finder.search_bytes(bytes(data))
        assert match is not None
        assert finder.first_kind(bytes(data)) == finder.kind_of(match)
    clean = rng.randbytes(1 << 16)
    assert finder.search_bytes(clean) is None and finder.first_kind(clean) is None


def sandbox_spec() -> SandboxSpec:
    return SandboxSpec(
        name="x", image="i", argv=["true"], env={"PATH": "/bin"}, workdir="/src",
        user="10001:10001", hostname="h", mounts=[], tmpfs={"/tmp": 1 << 20}, disk=1 << 20,
        cpus=1, memory=1 << 28, pids=64, deadline_seconds=60, log_cap=1 << 20, labels={},
    )  # fmt: skip


def test_plant_writes_home_and_env(tokens: Honeytokens, tmp_path: Path) -> None:
    planted = plant(sandbox_spec(), tokens, tmp_path / "home")
    assert planted.env["AWS_ACCESS_KEY_ID"] == tokens.aws_key_id
    assert planted.env["PATH"] == "/bin"
    assert [(m.target, m.read_only) for m in planted.mounts][-1] == ("/tmp/home", False)
    key = tmp_path / "home" / ".ssh" / "id_ed25519"
    assert key.read_text() == tokens.ssh_key
    assert (os.stat(key).st_uid, os.stat(key).st_mode & 0o777) == (10001, 0o600)
    creds = (tmp_path / "home" / ".aws" / "credentials").read_text()
    assert f"aws_secret_access_key = {tokens.aws_secret}" in creds
    assert tokens.git_token in (tmp_path / "home" / ".git-credentials").read_text()
    assert tokens.cargo_token in (tmp_path / "home" / ".cargo" / "credentials.toml").read_text()


@pytest.mark.parametrize("name", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_a_spec_cannot_set_the_planted_variables(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError) as err:
        build_spec({"source": str(tmp_path), "env": {name: "AKIAREALKEY"}})
    assert err.value.problems == [f"env: {name} is set by farm's sandbox policy; remove it"]

"""farm.sinkhole: the resolver script over real UDP on 127.0.0.1 with DNS packets built
here, its log, and the merge of its names into the classified actions."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import sinkhole
from farm.observe.classify import BlockedAction

from .test_honeytokens import sandbox_spec

pytestmark = pytest.mark.skipif(not shutil.which("perl"), reason="the resolver needs perl")


@pytest.fixture
def resolver(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen]]:
    """The resolver on an ephemeral loopback port, as the tests' own user (UID 0)."""
    logs = tmp_path / "dns"
    logs.mkdir()
    argv = ["perl", str(sinkhole.script_path()), "127.0.0.1", "0", str(logs), "0"]
    proc = subprocess.Popen(argv, env={}, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (logs / "ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "resolver not ready"
            time.sleep(0.02)
        pid, port = map(int, (logs / "ready").read_text().split())
        assert pid == proc.pid
        yield port, logs, proc
    finally:
        proc.kill()
        proc.wait()


def query(name: bytes, qtype: int, *, qid: int = 0x1234, flags: int = 0x0100) -> bytes:
    labels = b"".join(bytes([len(p)]) + p for p in name.split(b".") if p) + b"\0"
    return struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 0) + labels + struct.pack(">HH", qtype, 1)


def ask(port: int, packet: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            return s.recv(4096)
        except TimeoutError:
            return None


def answer_rdata(reply: bytes, asked: bytes) -> tuple[int, int, bytes | None]:
    """(id, rcode, rdata of the one answer or None), checking the reply's framing."""
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", reply[:12])
    assert flags & 0x8000 and (qd, ns, ar) == (1, 0, 0)
    assert reply[12 : len(asked)] == asked[12:]  # the question, echoed
    if not an:
        return qid, flags & 0xF, None
    ptr, _type, cls, ttl, length = struct.unpack(">HHHIH", reply[len(asked) : len(asked) + 12])
    assert (ptr, cls, ttl) == (0xC00C, 1, 0)
    return qid, flags & 0xF, reply[len(asked) + 12 : len(asked) + 12 + length]


def test_a_and_aaaa_get_one_reserved_address_per_name(resolver) -> None:
    port, logs, _ = resolver
    first = query(b"exfil.example.net", 1, qid=7)
    qid, rcode, rdata = answer_rdata(ask(port, first), first)
    assert (qid, rcode, rdata) == (7, 0, socket.inet_aton("198.18.0.1"))
    other = query(b"Other.Example.ORG", 1)
    assert answer_rdata(ask(port, other), other)[2] == socket.inet_aton("198.18.0.2")
    v6 = query(b"exfil.example.net", 28)
    rdata = answer_rdata(ask(port, v6), v6)[2]
    assert rdata == socket.inet_pton(socket.AF_INET6, "2001:2::1")
    again = query(b"EXFIL.example.net", 1)
    assert answer_rdata(ask(port, again), again)[2] == socket.inet_aton("198.18.0.1")
    assert (logs / "names").read_text() == "1\texfil.example.net\n2\tother.example.org\n"
    assert sinkhole.read_log(logs).names == {1: "exfil.example.net", 2: "other.example.org"}


def test_other_types_get_an_empty_answer(resolver) -> None:
    port, logs, _ = resolver
    mx = query(b"example.net", 15)
    assert answer_rdata(ask(port, mx), mx) == (0x1234, 0, None)
    assert (logs / "names").read_text() == ""


def test_a_name_that_is_not_text_is_logged_escaped(resolver) -> None:
    port, logs, _ = resolver
    odd = query(b"a\tb\nc.example", 1)
    assert answer_rdata(ask(port, odd), odd)[2] == socket.inet_aton("198.18.0.1")
    assert (logs / "names").read_text() == "1\ta\\x09b\\x0ac.example\n"


@pytest.mark.parametrize(
    "packet",
    [
        b"\x12",  # shorter than a header
        struct.pack(">HHHHHH", 1, 0x8100, 1, 0, 0, 0) + b"\x01a\0\0\1\0\1",  # a response
        struct.pack(">HHHHHH", 1, 0x0100, 2, 0, 0, 0) + b"\x01a\0\0\1\0\1",  # two questions
        struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x05ab",  # label past the end
        struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1",  # a pointer
        struct.pack(">HHHHHH", 1, 0x2900, 1, 0, 0, 0) + b"\x01a\0\0\1\0\1",  # opcode 5
    ],
)
def test_malformed_queries_get_no_answer_and_the_resolver_lives(resolver, packet) -> None:
    port, _logs, proc = resolver
    assert ask(port, packet, timeout=0.3) is None
    good = query(b"still.alive", 1)
    assert answer_rdata(ask(port, good), good)[2] == socket.inet_aton("198.18.0.1")
    assert proc.poll() is None


def test_prepare_mounts_the_resolver(tmp_path: Path) -> None:
    got = sinkhole.prepare(sandbox_spec(), tmp_path, tmp_path / "dns")
    assert got.sinkhole
    assert {(m.target, m.read_only) for m in got.mounts} == {
        (sinkhole.SCRIPT, True),
        ("/etc/resolv.conf", True),
        (sinkhole.LOG_DIR, False),
    }
    st = os.stat(tmp_path / "dns")
    assert (st.st_uid, st.st_mode & 0o777) == (sinkhole.RESOLVER_UID, 0o711)
    assert (tmp_path / "resolv.conf").read_text().startswith("nameserver 127.0.0.1\n")


def action(address: str, port: int, pid: int = 5, operation: str = "connect") -> BlockedAction:
    return BlockedAction(
        kind="network",
        operation=operation,
        target=f"{address}:{port}",
        errno="EHOSTUNREACH",
        time_ns=1,
        pid=pid,
        process_name="bash",
        executable="/usr/bin/bash",
        argv=["bash"],
        package="evil",
        version="0.3.1",
        role="build script",
        family="inet",
        address=address,
        port=port,
        protocol="tcp",
    )


def test_merge_names_connects_drops_the_resolver_and_lists_bare_resolves() -> None:
    resolved = sinkhole.Resolved(pid=9, names={1: "exfil.example.net", 2: "quiet.example"})
    actions = [
        action("127.0.0.1", 53, operation="dns query"),  # consumed
        action("198.18.0.1", 443),
        action("2001:2::1", 443),
        action("127.0.0.1", 9),
        action("198.18.0.1", 5353, pid=9, operation="sendto"),  # the resolver's own
        action("198.19.255.255", 80),  # handed out by nobody
    ]
    got = list(sinkhole.merge(actions, resolved))
    lines = [a.line() for a in got]
    assert lines == [
        "evil 0.3.1 (build script): resolve exfil.example.net → connect :443/tcp "
        "blocked (EHOSTUNREACH)",
        "evil 0.3.1 (build script): resolve exfil.example.net → connect :443/tcp "
        "blocked (EHOSTUNREACH)",
        "evil 0.3.1 (build script): connect 127.0.0.1:9/tcp blocked (EHOSTUNREACH)",
        "evil 0.3.1 (build script): connect 198.19.255.255:80/tcp blocked (EHOSTUNREACH)",
        # Only evil's process asked the resolver: the bare lookup is evil's.
        "evil 0.3.1 (build script): resolve quiet.example "
        "contained (nothing outside the sandbox is reachable)",
    ]


def test_a_bare_lookup_with_several_askers_names_them_all() -> None:
    resolved = sinkhole.Resolved(pid=9, names={1: "quiet.example"})
    other = action("127.0.0.1", 53, pid=6, operation="dns query")
    other = other.model_copy(update={"package": "good", "version": "1.0.0"})
    got = list(sinkhole.merge([action("127.0.0.1", 53, operation="dns query"), other], resolved))
    assert [a.line() for a in got] == [
        "(asked by one of: evil 0.3.1 (build script), good 1.0.0 (build script)): "
        "resolve quiet.example contained (nothing outside the sandbox is reachable)"
    ]


def test_index_of_knows_only_the_sinkhole_ranges() -> None:
    assert sinkhole.index_of("198.18.0.1") == 1
    assert sinkhole.index_of("198.19.0.0") == 65536
    assert sinkhole.index_of("2001:2::1:2") == 65538
    assert sinkhole.index_of("10.0.0.1") is None
    assert sinkhole.index_of("/var/run/docker.sock") is None
    assert sinkhole.index_of(None) is None


def test_read_log_does_not_follow_links(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("1\tforged.example\n")
    (tmp_path / "names").symlink_to(tmp_path / "elsewhere")
    assert sinkhole.read_log(tmp_path) == sinkhole.Resolved(None, {})


def test_merge_keeps_dns_queries_without_resolver() -> None:
    """No ready resolver: its names are unknown, so each query stays a network action
    (dropping them would leave a build that tried the network looking clean)."""
    query_action = action("127.0.0.1", 53, operation="dns query")
    for resolved in (sinkhole.Resolved(None, {}), sinkhole.Resolved(9, {}, late=True)):
        assert not resolved.ready
        assert list(sinkhole.merge([query_action], resolved)) == [query_action]
    assert list(sinkhole.merge([query_action], sinkhole.Resolved(9, {}))) == []


def test_read_log_says_when_the_resolver_was_late(tmp_path: Path) -> None:
    (tmp_path / "ready").write_text("12 53 late\n")
    assert sinkhole.read_log(tmp_path) == sinkhole.Resolved(12, {}, late=True)
    (tmp_path / "ready").write_text("12 53\n")
    assert sinkhole.read_log(tmp_path).ready

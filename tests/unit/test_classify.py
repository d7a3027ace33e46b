"""Classification and attribution of gVisor events, on events shaped as the sink
delivers them (tests/e2e/test_examples.py covers the same against a real build)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from farm.observe.classify import classify, lock_versions
from farm.observe.events import Context, TraceEvent

SCRIPT = "/build/target/release/build/evil-0123456789abcdef/build-script-build"
_time = iter(range(1, 10_000))


def ev(kind: str, tgid: int = 7, **fields: object) -> TraceEvent:
    ctx = Context(time_ns=next(_time), thread_group_id=tgid, thread_id=tgid, process_name="p")
    return TraceEvent(
        kind=kind, message_type=0, connection=1, container_id="c", context=ctx, fields=fields
    )


def inet(host: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host)


def test_build_script_actions_are_attributed_through_clone() -> None:
    events = [
        ev("exec", tgid=7, binary_path=SCRIPT, argv=[SCRIPT]),
        ev("clone", tgid=7, created_thread_group_id=8),
        ev("open", tgid=8, pathname="/usr/bin/x", flags=0o101, exit={"errorno": 13}),
        ev("open", tgid=8, pathname="/root/.ssh/id_rsa", flags=0, exit={"errorno": 2}),
        ev("connect", tgid=8, address=inet("10.1.2.3", 443), exit={"errorno": 101}),
    ]
    actions = classify(events, {"evil": "0.3.1"})
    assert [(a.kind, a.target, a.errno) for a in actions] == [
        ("fs_write_denied", "/usr/bin/x", "EACCES"),
        ("sensitive_read", "/root/.ssh/id_rsa", "ENOENT"),
        ("network", "10.1.2.3:443", "ENETUNREACH"),
    ]
    assert {(a.package, a.version, a.role, a.pid) for a in actions} == {
        ("evil", "0.3.1", "build script", 8)
    }
    assert actions[2].line() == (
        "evil 0.3.1 (build script): network: connect 10.1.2.3:443 failed (ENETUNREACH)"
    )


def test_benign_activity_is_not_reported() -> None:
    events = [
        ev("exec", binary_path="/usr/bin/rustc", argv=["rustc"]),
        ev("open", pathname="/build/target/release/deps/x.rlib", flags=0o101),
        ev("open", pathname="/usr/lib/libc.so.6", flags=0),
        ev("open", pathname="/dev/null", flags=2),
        ev("connect", address=inet("127.0.0.1", 9), exit={"errorno": 111}),
        ev("socket", domain=2, type=1),
    ]
    assert classify(events, {}) == []


def test_privilege_attempts() -> None:
    events = [
        ev("setid", id=0, exit={"errorno": 1}),
        ev("chroot", pathname="/tmp"),
        ev("syscall", sysno=272, exit={"result": 0}),  # unshare: contained, still recorded
        ev("syscall", sysno=272),  # the enter half is not counted twice
        ev("socket", domain=17, type=3, exit={"errorno": 1}),
        ev("open", pathname="/dev/kmsg", flags=0, exit={"errorno": 2}),
    ]
    got = [(a.kind, a.operation) for a in classify(events, {})]
    assert got == [
        ("privilege", "setid"),
        ("privilege", "chroot"),
        ("privilege", "unshare"),
        ("privilege", "raw socket"),
        ("privilege", "open device"),
    ]


def test_lock_versions(tmp_path: Path) -> None:
    (tmp_path / "Cargo.lock").write_text(
        '[[package]]\nname = "evil"\nversion = "0.3.1"\n\n'
        '[[package]]\nname = "dup"\nversion = "1.0.0"\n\n'
        '[[package]]\nname = "dup"\nversion = "2.0.0"\n'
    )
    assert lock_versions(tmp_path) == {"evil": "0.3.1"}
    assert lock_versions(tmp_path / "missing") == {}

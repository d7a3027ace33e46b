"""Classification and attribution of gVisor events, on events shaped as the sink
delivers them (tests/e2e/test_attacks.py covers the same against real builds)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from farm.ecosystems.cargo.attribution import lock_versions
from farm.observe.classify import classify, iter_actions
from farm.observe.events import Context, TraceEvent

SCRIPT = "/build/target/release/build/evil-0123456789abcdef/build-script-build"
EVIL_ENV = ["PATH=/usr/bin", "CARGO_PKG_NAME=evil", "CARGO_PKG_VERSION=0.3.1"]
_time = iter(range(1, 100_000))


def ev(kind: str, tgid: int = 7, *, tid: int | None = None, **fields: object) -> TraceEvent:
    ctx = Context(
        time_ns=next(_time),
        thread_group_id=tgid,
        thread_id=tid or tgid,
        process_name="p",
        cwd="/src",
    )
    return TraceEvent(
        kind=kind, message_type=0, connection=1, container_id="c", context=ctx, fields=fields
    )


def cargo_root() -> list[TraceEvent]:
    return [ev("container_start", tgid=1, args=["cargo", "build"])]


def step(tgid: int, binary: str, argv: list[str], env: list[str]) -> list[TraceEvent]:
    """cargo (tgid 1) spawns ``binary`` as tgid."""
    return [
        ev("clone", tgid=1, tid=3, created_thread_group_id=tgid),
        ev("exec", tgid=tgid, binary_path=binary, argv=argv, env=env),
    ]


def inet(host: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host)


def test_build_script_actions_are_attributed_through_clone() -> None:
    events = [
        *cargo_root(),
        *step(7, SCRIPT, [SCRIPT], EVIL_ENV),
        ev("clone", tgid=7, created_thread_group_id=8),
        ev("open", tgid=8, pathname="/usr/bin/x", flags=0o101, exit={"errorno": 13}),
        ev("open", tgid=8, pathname="/root/.ssh/id_rsa", flags=0, exit={"errorno": 2}),
        ev("socket", tgid=8, domain=2, type=1, exit={"result": 3}),
        ev("connect", tgid=8, fd=3, address=inet("10.1.2.3", 443), exit={"errorno": 101}),
    ]
    actions = classify(events, {})
    assert [(a.kind, a.target, a.errno) for a in actions] == [
        ("fs_write_denied", "/usr/bin/x", "EACCES"),
        ("sensitive_read", "/root/.ssh/id_rsa", "ENOENT"),
        ("network", "10.1.2.3:443", "ENETUNREACH"),
    ]
    assert {(a.package, a.version, a.role, a.pid, a.cwd) for a in actions} == {
        ("evil", "0.3.1", "build script", 8, "/src")
    }
    net = actions[2]
    assert (net.family, net.address, net.port, net.protocol) == ("inet", "10.1.2.3", 443, "tcp")
    assert net.line() == "evil 0.3.1 (build script): connect 10.1.2.3:443/tcp blocked (ENETUNREACH)"


def test_a_forged_cargo_environment_does_not_move_the_blame() -> None:
    events = [
        *cargo_root(),
        *step(7, SCRIPT, [SCRIPT], EVIL_ENV),
        # evil's build script starts another cargo, whose child claims to be serde
        ev("clone", tgid=7, created_thread_group_id=8),
        ev("exec", tgid=8, binary_path="/usr/bin/cargo", argv=["cargo"], env=[]),
        ev("clone", tgid=8, created_thread_group_id=9),
        ev(
            "exec",
            tgid=9,
            binary_path="/usr/bin/rustc",
            argv=["rustc"],
            env=["CARGO_PKG_NAME=serde", "CARGO_PKG_VERSION=1.0.0"],
        ),
        ev("open", tgid=9, pathname="/etc/shadow", flags=0, exit={"errorno": 13}),
    ]
    [action] = classify(events, {})
    assert (action.package, action.version, action.role) == ("evil", "0.3.1", "build script")


def test_proc_macro_actions_are_attributed_to_the_macro_and_the_crate_compiled() -> None:
    macro_argv = ["rustc", "--crate-name", "evil_macro", "--crate-type", "proc-macro"]
    macro_argv += ["-C", "extra-filename=-00aa11bb22cc33dd"]
    macro_argv += ["--out-dir", "/build/target/release/deps"]
    lib = "/build/target/release/deps/libevil_macro-00aa11bb22cc33dd.so"
    victim_argv = ["rustc", "--crate-name", "victim", "--extern", f"evil_macro={lib}"]
    user_env = ["CARGO_PKG_NAME=victim", "CARGO_PKG_VERSION=1.2.3"]
    events = [
        *cargo_root(),
        *step(
            5,
            "/usr/bin/rustc",
            macro_argv,
            ["CARGO_PKG_NAME=evil-macro", "CARGO_PKG_VERSION=0.9.0"],
        ),
        *step(6, "/usr/bin/rustc", victim_argv, user_env),
        ev("open", tgid=6, pathname="/root/.aws/credentials", flags=0, exit={"errorno": 2}),
        ev("open", tgid=6, pathname=lib, flags=0o2000000),
        ev("open", tgid=6, pathname="/root/.ssh/id_ed25519", flags=0, exit={"errorno": 13}),
    ]
    before, after = classify(events, {})
    assert (before.package, before.role, before.compiling) == ("victim", "rustc", "victim")
    assert (after.package, after.version, after.role, after.compiling) == (
        "evil-macro",
        "0.9.0",
        "proc macro",
        "victim",
    )
    assert after.who() == "evil-macro 0.9.0 (proc macro, compiling victim)"


def test_loopback_is_the_sandboxs_own_only_when_something_there_answers() -> None:
    events = [
        *cargo_root(),
        # a test server inside the sandbox, and a client that reaches it
        ev("socket", tgid=1, domain=2, type=1, exit={"result": 3}),
        ev("bind", tgid=1, fd=3, address=inet("127.0.0.1", 8080)),
        ev("socket", tgid=1, domain=2, type=2, exit={"result": 4}),
        ev("connect", tgid=1, fd=4, address=inet("127.0.0.1", 8080)),  # udp to a bound port
        ev("socket", tgid=1, domain=2, type=1, exit={"result": 5}),
        ev("connect", tgid=1, fd=5, address=inet("127.0.0.1", 9000)),  # tcp, accepted
        ev("syscall", tgid=1, sysno=44, arg1=5, exit={}),  # send on it: judged at connect
        # reaching for the host: refused tcp, udp to nothing, unconnected sendto
        ev("socket", tgid=1, domain=2, type=1, exit={"result": 6}),
        ev("connect", tgid=1, fd=6, address=inet("127.0.0.1", 443), exit={"errorno": 111}),
        ev("socket", tgid=1, domain=2, type=2, exit={"result": 7}),
        ev("connect", tgid=1, fd=7, address=inet("127.0.0.1", 53)),
        ev("socket", tgid=1, domain=2, type=2, exit={"result": 8}),
        ev("syscall", tgid=1, sysno=44, arg1=8, exit={}),
        ev("bind", tgid=1, fd=8, address=inet("0.0.0.0", 80)),
    ]
    got = [(a.operation, a.target, a.protocol, a.errno) for a in classify(events, {})]
    assert got == [
        ("connect", "127.0.0.1:443", "tcp", "ECONNREFUSED"),
        ("connect", "127.0.0.1:53", "udp", ""),
        ("sendto", "", "udp", ""),
        ("bind", "0.0.0.0:80", "udp", ""),
    ]


def test_unix_sockets_other_than_nscd_are_network() -> None:
    docker = struct.pack("<H", socket.AF_UNIX) + b"/var/run/docker.sock\0"
    nscd = struct.pack("<H", socket.AF_UNIX) + b"/var/run/nscd/socket\0"
    events = [
        ev("connect", fd=3, address=nscd, exit={"errorno": 2}),
        ev("connect", fd=4, address=docker, exit={"errorno": 2}),
    ]
    [action] = classify(events, {})
    assert (action.kind, action.target, action.protocol) == (
        "network",
        "/var/run/docker.sock",
        "unix",
    )


def test_benign_activity_is_not_reported() -> None:
    events = [
        ev("exec", binary_path="/usr/bin/rustc", argv=["rustc"]),
        ev("open", pathname="/build/target/release/deps/x.rlib", flags=0o101),
        ev("open", pathname="/usr/lib/libc.so.6", flags=0),
        ev("open", pathname="/dev/null", flags=2),
        ev("open", pathname="src/lib.rs", flags=0, exit={"errorno": 2}),
        ev("socket", domain=1, type=1, exit={"result": 3}),
        ev("syscall", sysno=87, exit={"errorno": 2}),  # unlink of a missing file
        ev("syscall", sysno=82, exit={}),  # rename that worked
        ev("setid", id=10001),
    ]
    assert classify(events, {}) == []


def test_privilege_attempts() -> None:
    events = [
        ev("setid", sysno=105, exit={"errorno": 1}),  # setuid(0): proto3 omits the 0
        ev("setresid", sysno=117, rid=0xFFFFFFFF, sid=0xFFFFFFFF),  # euid 0
        ev("chroot", pathname="/tmp"),
        ev("syscall", sysno=272, exit={"result": 0}),  # unshare: contained, still recorded
        ev("syscall", sysno=272),  # the enter half is not counted twice
        ev("socket", domain=17, type=3, exit={"errorno": 1}),
        ev("open", pathname="/dev/kmsg", flags=0, exit={"errorno": 2}),
        ev("syscall", sysno=165, exit={"errorno": 1}),  # mount
    ]
    got = [(a.kind, a.operation) for a in classify(events, {})]
    assert got == [
        ("privilege", "setuid"),
        ("privilege", "setresuid"),
        ("privilege", "chroot"),
        ("privilege", "unshare"),
        ("privilege", "raw socket"),
        ("privilege", "open device"),
        ("privilege", "mount"),
    ]


def test_denied_tree_changes_and_relative_paths() -> None:
    events = [
        ev("syscall", sysno=264, exit={"errorno": 13}),  # renameat
        ev("syscall", sysno=87, exit={"errorno": 30}),  # unlink on a read-only fs
        ev("syscall", sysno=268, exit={"errorno": 1}),  # fchmodat
        ev("open", pathname="src/main.rs", fd=-100, flags=0o2001, exit={"errorno": 13}),
        ev("open", pathname="/home/u/marker", flags=0o101, exit={"errorno": 2}),  # host path
        ev("open", pathname="/build/target/x/y", flags=0o101, exit={"errorno": 2}),  # ours
    ]
    got = [(a.kind, a.operation, a.target, a.errno) for a in classify(events, {})]
    assert got == [
        ("fs_write_denied", "renameat", "", "EACCES"),
        ("fs_write_denied", "unlink", "", "EROFS"),
        ("fs_write_denied", "fchmodat", "", "EPERM"),
        ("fs_write_denied", "open for write", "/src/src/main.rs", "EACCES"),
        ("fs_write_denied", "open for write", "/home/u/marker", "ENOENT"),
    ]


def test_processes_alive_when_the_build_command_exits_are_persistence() -> None:
    events = [
        *cargo_root(),
        *step(7, SCRIPT, [SCRIPT], EVIL_ENV),
        ev("clone", tgid=7, created_thread_group_id=8),
        ev("exec", tgid=8, binary_path="/usr/bin/setsid", argv=["setsid", "sh"], env=[]),
        ev("clone", tgid=8, created_thread_group_id=9),
        ev("exec", tgid=9, binary_path="/usr/bin/sleep", argv=["sleep", "600"], env=[]),
        ev("task_exit", tgid=7),  # the build script is done
        *step(10, "/usr/bin/rustc", ["rustc"], []),
        ev("task_exit", tgid=10),
        ev("task_exit", tgid=1, tid=1),  # cargo exits: the build is over
        ev("task_exit", tgid=8, exit_status=9),  # killed with the sandbox
        ev("task_exit", tgid=9, exit_status=9),
    ]
    [action] = classify(events, {})
    assert (action.kind, action.pid, action.executable) == ("persistence", 8, "/usr/bin/setsid")
    assert (action.package, action.role) == ("evil", "build script")
    assert action.line().endswith("outlived the build: setsid sh killed with the sandbox")


def test_a_build_cut_short_by_a_signal_has_no_persistence() -> None:
    events = [
        *cargo_root(),
        *step(7, "/usr/bin/rustc", ["rustc"], []),
        ev("task_exit", tgid=1, tid=1, exit_status=9),  # the deadline's SIGKILL
        ev("task_exit", tgid=7, exit_status=9),
    ]
    assert classify(events, {}) == []


def test_lock_versions(tmp_path: Path) -> None:
    (tmp_path / "Cargo.lock").write_text(
        '[[package]]\nname = "evil"\nversion = "0.3.1"\n\n'
        '[[package]]\nname = "dup"\nversion = "1.0.0"\n\n'
        '[[package]]\nname = "dup"\nversion = "2.0.0"\n'
    )
    assert lock_versions(tmp_path) == {"evil": "0.3.1"}
    assert lock_versions(tmp_path / "missing") == {}


def test_getaddrinfo_through_the_sinkhole_is_one_dns_query() -> None:
    """glibc's resolver, as recorded in gVisor: a raw netlink socket and its sendto
    (address listing), a UDP socket connected to the resolver and a sendmmsg of the A
    and AAAA queries on it (its 5th register is noise, not an address)."""
    netlink = struct.pack("<H", 16) + b"\0" * 10
    events = [
        *cargo_root(),
        ev("socket", tgid=1, domain=16, type=3 | 0o2000000, exit={"result": 3}),
        ev("bind", tgid=1, fd=3, address=netlink),
        ev("syscall", tgid=1, sysno=44, arg1=3, arg5=0x7FFD1234, exit={}),  # sendto netlink
        ev("socket", tgid=1, domain=2, type=2 | 0o4000, exit={"result": 4}),
        ev("connect", tgid=1, fd=4, address=inet("127.0.0.1", 53)),
        ev("syscall", tgid=1, sysno=307, arg1=4, arg5=0x7FFD5678, exit={}),  # sendmmsg
        ev("syscall", tgid=1, sysno=46, arg1=4, arg5=0x1, exit={}),  # sendmsg
    ]
    # Without a resolver, the connect is udp to nothing; the rest is not network.
    assert [(a.operation, a.target) for a in classify(events, {})] == [("connect", "127.0.0.1:53")]
    got = [(a.kind, a.operation, a.target) for a in iter_actions(events, {}, dns_port=53)]
    assert got == [("network", "dns query", "127.0.0.1:53")]


def test_a_send_elsewhere_on_the_resolvers_socket_is_a_network_action() -> None:
    """A build connects a UDP socket to the sinkhole, then sendmsg()s with an address of
    its own in msg_name (which gVisor does not record): it fails for lack of a route,
    where every real query to the resolver succeeds. That failure is the attempt."""
    events = [
        *cargo_root(),
        ev("socket", tgid=1, domain=2, type=2, exit={"result": 4}),
        ev("connect", tgid=1, fd=4, address=inet("127.0.0.1", 53)),
        ev("syscall", tgid=1, sysno=307, arg1=4, arg5=0x7FFD5678, exit={}),  # a real query
        ev("syscall", tgid=1, sysno=46, arg1=4, exit={"errorno": 101}),  # ENETUNREACH
    ]
    got = [(a.kind, a.operation) for a in iter_actions(events, {}, dns_port=53)]
    assert got == [("network", "dns query"), ("network", "sendmsg")]

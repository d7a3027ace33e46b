"""Classification sees through path spellings: every alias the kernel offers for one
object is judged as that object (farm.observe.paths), on events shaped as the sink
delivers them. tests/e2e/test_attack_evasion.py tries the same in the real sandbox."""

from __future__ import annotations

import pytest

from farm.observe.classify import classify
from farm.observe.paths import Where, canonical

from .test_classify import cargo_root, ev

#: (spelling, the object it names) for a process 7 whose cwd is /src.
ALIASES = [
    ("//etc//shadow", "/etc/shadow"),
    ("/etc/./shadow", "/etc/shadow"),
    ("/etc/../etc/shadow", "/etc/shadow"),
    ("/tmp/../../etc/shadow", "/etc/shadow"),
    ("/proc/self/root/etc/shadow", "/etc/shadow"),
    ("/proc/thread-self/root/etc/shadow", "/etc/shadow"),
    ("/proc/7/root/etc/shadow", "/etc/shadow"),
    ("/proc/1/root/etc/shadow", "/etc/shadow"),
    ("/proc/7/task/8/root/etc/shadow", "/etc/shadow"),
    ("/proc/self/root/proc/self/root//etc/gshadow", "/etc/gshadow"),
    ("/proc/self/cwd/../etc/shadow", "/etc/shadow"),
    ("/proc/self/root/root/.ssh/id_rsa", "/root/.ssh/id_rsa"),
    ("/proc/thread-self/environ", "/proc/7/environ"),
    ("/proc/self/environ", "/proc/7/environ"),
    ("/proc/self/task/8/environ", "/proc/7/environ"),
    ("/proc/1/task/1/environ", "/proc/1/environ"),
    ("/proc/9/environ", "/proc/9/environ"),
    ("/proc//1/./environ", "/proc/1/environ"),
    ("/proc/self/root/proc/1/environ", "/proc/1/environ"),
]


@pytest.mark.parametrize(("spelled", "target"), ALIASES)
def test_every_spelling_of_a_secret_is_flagged_as_the_secret(spelled: str, target: str) -> None:
    events = [
        *cargo_root(),
        ev("open", tgid=7, pathname=spelled, flags=0, exit={"errorno": 13}),
    ]
    [action] = classify(events, {})
    assert (action.kind, action.operation, action.target) == ("sensitive_read", "open", target)
    assert action.spelled == (None if spelled == target else spelled)
    if action.spelled:
        assert f"open {target} (as {spelled}) blocked (EACCES)" == action.what()


def test_relative_spellings_resolve_against_the_cwd_and_the_dirfd() -> None:
    events = [
        *cargo_root(),
        ev("open", tgid=7, pathname="../etc/shadow", flags=0, exit={"errorno": 13}),
        ev("open", tgid=7, fd=5, fd_path="/proc/self/root", pathname="etc//shadow", flags=0),
    ]
    assert [(a.target, a.spelled) for a in classify(events, {})] == [
        ("/etc/shadow", "/src/../etc/shadow"),
        ("/etc/shadow", "/proc/self/root/etc//shadow"),
    ]


@pytest.mark.parametrize(
    "reopen", ["/proc/self/fd/3", "/proc/thread-self/fd/3", "/dev/fd/3", "/proc/7/fd/3"]
)
def test_reopening_an_fd_is_judged_as_the_file_it_was_opened_from(reopen: str) -> None:
    """The first open is flagged already; a reopen through proc names the same secret,
    also when the fd came from an unflagged spelling of a directory."""
    events = [
        *cargo_root(),
        ev("open", tgid=7, pathname="/root/.aws", flags=0o200000, exit={"result": 3}),
        ev("open", tgid=7, pathname=f"{reopen}/credentials", flags=0, exit={"result": 4}),
        ev("open", tgid=7, pathname="/proc/self/fd/4", flags=0, exit={"result": 5}),
        ev("open", tgid=8, pathname="/proc/7/fd/4", flags=0, exit={"result": 3}),
    ]
    got = [(a.pid, a.target) for a in classify(events, {})]
    assert got == [
        (7, "/root/.aws/credentials"),
        (7, "/root/.aws/credentials"),
        (8, "/root/.aws/credentials"),
    ]


def test_the_standard_streams_are_the_processs_own_fds() -> None:
    where = Where(7, "/src", {(7, 0): "/etc/shadow"})
    assert canonical("/dev/stdin", where) == "/etc/shadow"
    assert canonical("/dev/stdout", where) == "/proc/7/fd/1"
    assert canonical("/dev/fd/0/../x", where) == "/etc/x"


def test_harmless_and_own_spellings_stay_quiet() -> None:
    events = [
        *cargo_root(),
        ev("open", tgid=7, pathname="/dev/stdout", flags=1),
        ev("open", tgid=7, pathname="/dev/fd/1", flags=1),
        ev("open", tgid=7, pathname="/proc/self/status", flags=0),
        ev("open", tgid=7, pathname="/proc/self/cwd/target/x", flags=0o101),
        ev("open", tgid=7, pathname="/proc/self/fd/9", flags=1, exit={"errorno": 2}),
        ev("open", tgid=7, pathname="//dev//null", flags=1),
    ]
    assert classify(events, {}) == []


@pytest.mark.parametrize(
    ("spelled", "target"),
    [
        ("/proc/self/root/dev/kmsg", "/dev/kmsg"),
        ("/dev/../dev/mem", "/dev/mem"),
        ("/proc/thread-self/root/usr/bin/x", "/usr/bin/x"),
    ],
)
def test_devices_and_denied_writes_see_through_spellings_too(spelled: str, target: str) -> None:
    events = [*cargo_root(), ev("open", tgid=7, pathname=spelled, flags=1, exit={"errorno": 30})]
    [action] = classify(events, {})
    assert (action.target, action.spelled) == (target, spelled)

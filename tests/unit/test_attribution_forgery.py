"""Attribution cannot be forged from inside the build: each trick below, as gVisor
records it, still names the package that played it, and an allow rule for the name
it claims does not pass its actions (tests/e2e/test_attack_evasion.py plays the
fake-library trick in the real sandbox)."""

from __future__ import annotations

from farm.observe.classify import BlockedAction, classify
from farm.observe.events import TraceEvent
from farm.observe.verdict import apply_allow
from farm.spec import AllowRule, ObservePolicy

from .test_classify import cargo_root, ev, step

DEPS = "/src/target/release/deps"
SERDE_LIB = f"{DEPS}/libserde_derive-1111111111111111.so"
EVIL_LIB = f"{DEPS}/libevil_macro-2222222222222222.so"
SCRIPT = "/src/target/release/build/evil-macro-3333333333333333/build-script-build"
SERDE_RULE = ObservePolicy(allow=[AllowRule(package="serde*derive")])


def macro_compile(tgid: int, crate: str, extra: str, package: str) -> list[TraceEvent]:
    """cargo compiles a proc macro into target/release/deps."""
    argv = ["rustc", "--crate-name", crate, "--crate-type", "proc-macro"]
    argv += ["-C", f"extra-filename=-{extra}", "--out-dir", DEPS]
    return step(
        tgid, "/usr/bin/rustc", argv, [f"CARGO_PKG_NAME={package}", "CARGO_PKG_VERSION=1.0.0"]
    )


def victim_compile(tgid: int) -> list[TraceEvent]:
    """cargo compiles victim, which uses both macros."""
    argv = ["rustc", "--crate-name", "victim", "--extern", f"serde_derive={SERDE_LIB}"]
    argv += ["--extern", f"evil_macro={EVIL_LIB}"]
    env = ["CARGO_PKG_NAME=victim", "CARGO_PKG_VERSION=0.1.0"]
    return step(tgid, "/usr/bin/rustc", argv, env)


def steal(tgid: int) -> TraceEvent:
    return ev("open", tgid=tgid, pathname="/root/.ssh/id_ed25519", flags=0, exit={"errorno": 2})


def passed(actions: list[BlockedAction]) -> list[bool]:
    return [a.allowed for a in apply_allow(actions, SERDE_RULE)]


def test_a_fake_library_named_like_another_macro_names_nobody() -> None:
    events = [
        *cargo_root(),
        *macro_compile(5, "evil_macro", "2222222222222222", "evil-macro"),
        *victim_compile(6),
        ev("open", tgid=6, pathname=EVIL_LIB, flags=0o2000000),  # rustc loads evil_macro
        # evil_macro's code writes and opens a library named like serde_derive's
        ev("open", tgid=6, pathname="/tmp/deps/libserde_derive-1111111111111111.so", flags=0),
        ev("open", tgid=6, pathname=f"{DEPS}/../deps/x/libserde_derive-0.so", flags=0),
        steal(6),
    ]
    [action] = classify(events, {})
    assert (action.package, action.role, action.compiling) == ("evil-macro", "proc macro", "victim")
    assert action.suspects == ["evil-macro"]
    assert passed([action]) == [False]


def test_opening_another_macros_real_library_makes_it_a_suspect_not_the_culprit() -> None:
    events = [
        *cargo_root(),
        *macro_compile(4, "serde_derive", "1111111111111111", "serde_derive"),
        *macro_compile(5, "evil_macro", "2222222222222222", "evil-macro"),
        *victim_compile(6),
        ev("open", tgid=6, pathname=EVIL_LIB, flags=0o2000000),
        ev("open", tgid=6, pathname=SERDE_LIB, flags=0o2000000),  # evil opens serde's
        steal(6),
        ev("open", tgid=6, pathname=EVIL_LIB, flags=0o2000000),  # a reopen moves nothing
        steal(6),
    ]
    first, second = classify(events, {})
    assert first.suspects == second.suspects == ["evil-macro", "serde_derive"]
    assert first.package == second.package == "serde_derive"  # the latest load...
    assert passed([first, second]) == [False, False]  # ...but its allow rule cannot pass it
    assert first.who() == "serde_derive 1.0.0 (proc macro, compiling victim; or evil-macro)"
    everyone = ObservePolicy(allow=[AllowRule(package="*")])
    assert all(a.allowed for a in apply_allow([first], everyone))


def test_a_build_script_running_rustc_with_a_forged_package_rewrites_nothing() -> None:
    forged = ["rustc", "--crate-name", "evil_macro", "--crate-type", "proc-macro"]
    forged += ["-C", "extra-filename=-2222222222222222", "--out-dir", DEPS]
    events = [
        *cargo_root(),
        *macro_compile(5, "evil_macro", "2222222222222222", "evil-macro"),
        # evil-macro's build script (started by cargo) execs rustc claiming serde_derive
        *step(7, SCRIPT, [SCRIPT], ["CARGO_PKG_NAME=evil-macro", "CARGO_PKG_VERSION=1.0.0"]),
        ev("clone", tgid=7, created_thread_group_id=8),
        ev(
            "exec",
            tgid=8,
            binary_path="/usr/bin/rustc",
            argv=forged,
            env=["CARGO_PKG_NAME=serde_derive", "CARGO_PKG_VERSION=1.0.0"],
        ),
        steal(8),
        *victim_compile(6),
        ev("open", tgid=6, pathname=EVIL_LIB, flags=0o2000000),
        steal(6),
    ]
    by_script, by_macro = classify(events, {})
    assert (by_script.package, by_script.role) == ("evil-macro", "build script")
    assert (by_macro.package, by_macro.role) == ("evil-macro", "proc macro")
    assert passed([by_script, by_macro]) == [False, False]


def test_a_build_script_is_named_by_the_path_cargo_chose_not_its_environment() -> None:
    events = [
        *cargo_root(),
        *step(7, SCRIPT, [SCRIPT], ["CARGO_PKG_NAME=serde_derive", "CARGO_PKG_VERSION=9"]),
        steal(7),
    ]
    [action] = classify(events, {"evil-macro": "1.0.0"})
    assert (action.package, action.version, action.role) == ("evil-macro", "1.0.0", "build script")
    assert passed([action]) == [False]


def test_a_rustc_nobody_told_about_a_library_does_not_load_it() -> None:
    """Only the libraries cargo passed a rustc step with --extern count as its macros:
    a rustc started by a build script, or any other process, names nobody by opening."""
    events = [
        *cargo_root(),
        *macro_compile(4, "serde_derive", "1111111111111111", "serde_derive"),
        *step(6, "/usr/bin/rustc", ["rustc", "--crate-name", "victim"], ["CARGO_PKG_NAME=victim"]),
        ev("open", tgid=6, pathname=SERDE_LIB, flags=0o2000000),
        steal(6),
    ]
    [action] = classify(events, {})
    assert (action.package, action.role, action.suspects) == ("victim", "rustc", [])


def test_a_child_outliving_its_build_script_keeps_it_when_the_pid_is_reused() -> None:
    """A build script forks a child, exits, and burns pids until cargo starts another
    crate's rustc under the script's old pid: the child's actions stay the script's."""
    events = [
        *cargo_root(),
        *step(5, SCRIPT, [SCRIPT], ["CARGO_PKG_NAME=evil-macro", "CARGO_PKG_VERSION=1.0.0"]),
        ev("clone", tgid=5, tid=5, created_thread_group_id=9),  # the child that stays
        ev("task_exit", tgid=5, exit_status=0),
        *victim_compile(5),  # pid 5 reused by a rustc cargo started for victim
        steal(9),
    ]
    [action] = classify(events, {})
    assert (action.package, action.role) == ("evil-macro", "build script")


def test_reading_an_ordinary_dependencys_rlib_is_no_macro_load() -> None:
    """rustc reads every --extern library; only a .so (a proc macro) is loaded as code.
    Compiling app with ``--extern tattle=libtattle-….rlib`` stays app's rustc step."""
    rlib = f"{DEPS}/libtattle-4444444444444444.rlib"
    argv = ["rustc", "--crate-name", "app", "--extern", f"tattle={rlib}"]
    events = [
        *cargo_root(),
        *step(6, "/usr/bin/rustc", argv, ["CARGO_PKG_NAME=app", "CARGO_PKG_VERSION=0.1.0"]),
        ev("open", tgid=6, pathname=rlib, flags=0o2000000),
        steal(6),
    ]
    [action] = classify(events, {"tattle": "0.2.0"})
    assert (action.package, action.role, action.suspects) == ("app", "rustc", [])

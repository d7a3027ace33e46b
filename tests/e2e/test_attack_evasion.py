"""Evasion variants of the attack corpus (tests/fixtures/attacks/evasion), built once in
gVisor in enforce mode with an allow rule for serde_derive: secrets read through the
kernel's other spellings of their paths are flagged as those secrets, and a proc macro
and a build script that forge their attribution are still named, and not allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, farm, farm_containers, tree_digest

EVASION = ROOT / "tests" / "fixtures" / "attacks" / "evasion"

#: alias-attack's spellings (its build.rs) -> the object each names; "{pid}" is the
#: build script's own pid and "{fd}" an fd of /proc/1 it opened.
SPELLINGS = {
    "//etc//shadow": "/etc/shadow",
    "/etc/./gshadow": "/etc/gshadow",
    "/tmp/../etc/shadow": "/etc/shadow",
    "/proc/self/root/etc/shadow": "/etc/shadow",
    "/proc/thread-self/root/etc/gshadow": "/etc/gshadow",
    "/proc/1/root//etc/shadow": "/etc/shadow",
    "/proc/self/cwd/../../etc/shadow": "/etc/shadow",
    "/proc/thread-self/environ": "/proc/{pid}/environ",
    "/proc/self/root/root/.ssh/id_rsa": "/root/.ssh/id_rsa",
    "/proc/{pid}/task/{pid}/environ": "/proc/{pid}/environ",
    "/dev/fd/{fd}/environ": "/proc/1/environ",
}


@pytest.fixture(scope="module")
def evasion(tmp_path_factory: pytest.TempPathFactory, client) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("evasion")
    spec = tmp / "build.toml"
    spec.write_text('[observe]\nmode = "enforce"\n[[observe.allow]]\npackage = "serde*derive"\n')
    before = tree_digest(EVASION)
    home = tmp / "farm-home"
    done = farm(home, "build", str(EVASION), "--json", "--spec", str(spec))
    out = json.loads(done.stdout) if done.stdout.strip() else {}
    yield {
        "code": done.returncode,
        "stderr": done.stderr,
        "out": out,
        "report": farm(home, "report", out.get("id", "?")).stdout,
        "source_unchanged": tree_digest(EVASION) == before,
    }
    assert farm_containers(client, home) == []


def by(evasion: dict, package: str) -> list[dict]:
    return [a for a in evasion["out"]["blocked_actions"] if a["package"] == package]


def test_the_build_is_quarantined_and_nothing_is_allowed(evasion: dict) -> None:
    assert evasion["code"] == 3, evasion["stderr"]
    out = evasion["out"]
    assert (out["status"], out["artifacts"]) == ("quarantined", [])
    assert out["observation"]["complete"] and out["observation"]["unlisted"] == 0
    assert [a for a in out["blocked_actions"] if a["allowed"]] == []
    packages = {a["package"] for a in out["blocked_actions"]}
    assert packages == {"alias-attack", "forge-macro", "forge-script"}
    assert evasion["source_unchanged"]


def test_every_spelling_of_a_secret_is_flagged_as_that_secret(evasion: dict) -> None:
    actions = by(evasion, "alias-attack")
    assert {(a["kind"], a["role"], a["version"]) for a in actions} == {
        ("sensitive_read", "build script", "0.7.0")
    }
    pid = actions[0]["pid"]
    [fd] = {
        a["spelled"].split("/")[3] for a in actions if (a["spelled"] or "").startswith("/dev/fd/")
    }
    want = {
        (spelled.format(pid=pid, fd=fd), target.format(pid=pid))
        for spelled, target in SPELLINGS.items()
    }
    got = {(a["spelled"] or a["target"], a["target"]) for a in actions}
    assert got == want
    assert "open /etc/shadow (as /proc/self/root/etc/shadow)" in evasion["report"]


def test_a_macro_opening_a_fake_library_is_still_named(evasion: dict) -> None:
    [action] = by(evasion, "forge-macro")
    assert (action["kind"], action["target"]) == ("sensitive_read", "/root/.ssh/id_ed25519")
    assert (action["version"], action["role"], action["compiling"]) == (
        "0.8.0",
        "proc macro",
        "evasion-victim",
    )
    assert action["suspects"] == ["forge-macro"]
    assert "forge-macro 0.8.0 (proc macro, compiling evasion-victim):" in evasion["report"]


def test_a_build_script_running_a_forged_rustc_is_still_named(evasion: dict) -> None:
    [action] = by(evasion, "forge-script")
    assert (action["kind"], action["target"]) == ("sensitive_read", "/root/.ssh/id_rsa")
    assert (action["version"], action["role"]) == ("0.9.0", "build script")
    assert Path(action["executable"]).name == "rustc"
    assert "serde" not in evasion["report"]


KILL_CARGO = ROOT / "tests" / "fixtures" / "attacks" / "kill-cargo"


def test_a_build_script_that_kills_cargo_does_not_hide_what_it_left_behind(
    tmp_path: Path, client
) -> None:
    """The build's command ending by a signal is what a teardown looks like from inside.
    A build script that leaves a process and then SIGKILLs cargo must not get its process
    forgiven as "killed with the build": pid 1 (farm's ``timeout``) outlives cargo, so the
    sandbox's own end is still a normal exit and what outlived cargo is recorded."""
    home = tmp_path / "farm-home"
    done = farm(home, "build", str(KILL_CARGO), "--json")
    out = json.loads(done.stdout)
    assert out["exit_code"] == 137, done.stderr  # cargo was SIGKILLed: the attack ran
    persisted = [a for a in out["blocked_actions"] if a["kind"] == "persistence"]
    assert {(a["package"], a["version"], a["role"]) for a in persisted} == {
        ("kill-cargo", "0.11.0", "build script")
    }, out["blocked_actions"]
    assert any("sleep 700" in a["target"] for a in persisted), persisted
    assert out["observation"]["complete"], out["observation"]
    assert farm_containers(client, home) == []

"""The public attack corpus (tests/fixtures/attacks), built once in gVisor: each class of
attack is recorded by gVisor, classified exactly, and attributed to the crate, version
and role that tried it; and audit versus enforce mode decide the build's fate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.store import Store

from . import test_serve
from .conftest import ROOT, Listener, farm, farm_containers, tree_digest

serve = test_serve.serve  # the fixture that runs a real `farm serve`

CORPUS = ROOT / "tests" / "fixtures" / "attacks"
NO_PATH = ""  # raw syscalls: gVisor records no path


def expected(port: int) -> dict[tuple[str, str, str], set[tuple[str, str, str]]]:
    """(package, version, role) -> exactly the (kind, operation, target) it tried."""
    return {
        ("net-attack", "0.1.0", "build script"): {
            ("network", "connect", f"127.0.0.1:{port}"),
            ("network", "connect", f"[::1]:{port}"),
            ("network", "sendto", NO_PATH),  # unconnected udp
            ("network", "connect", "/var/run/docker.sock"),
        },
        ("fs-attack", "0.2.0", "build script"): {
            ("fs_write_denied", "open for write", "/usr/bin/fs-attack-pwned"),
            ("fs_write_denied", "rename", NO_PATH),
            ("fs_write_denied", "unlink", NO_PATH),
            ("fs_write_denied", "chmod", NO_PATH),
            ("fs_write_denied", "linkat", NO_PATH),
        },
        ("priv-attack", "0.3.0", "build script"): {
            ("privilege", "setuid", "uid/gid 0"),
            ("privilege", "mount", NO_PATH),
            ("privilege", "chroot", "/tmp"),
            ("privilege", "ptrace", NO_PATH),
            ("privilege", "bpf", NO_PATH),
            ("privilege", "keyctl", NO_PATH),
            ("privilege", "raw socket", "domain 17 type 3"),
            ("privilege", "open device", "/dev/kmsg"),
            ("privilege", "unshare", NO_PATH),
        },
        ("secrets-attack", "0.4.0", "build script"): {
            ("sensitive_read", "open", "/tmp/home/.ssh/id_rsa"),
            ("sensitive_read", "open", "/root/.aws/credentials"),
            ("sensitive_read", "open", "/root/.docker/config.json"),
            ("sensitive_read", "open", "/var/run/secrets/kubernetes.io/serviceaccount/token"),
            ("sensitive_read", "open", "/etc/shadow"),
            ("sensitive_read", "open", "/proc/1/environ"),
        },
        ("persist-attack", "0.5.0", "build script"): {
            ("persistence", "outlived the build:", "sleep 600"),
        },
        ("dns-attack", "0.10.0", "build script"): {
            # farm.sinkhole: the name of each blocked connect, and a lookup on its own
            ("network", "resolve", "exfil.example.net → connect :443"),
            ("sensitive_read", "open", "/tmp/home/.aws/credentials"),  # a honeytoken
            ("network", "resolve", "[honeytoken:aws].t.example.net"),  # DNS exfiltration
        },
        ("macro-attack", "0.6.0", "proc macro"): {
            ("sensitive_read", "open", "/root/.ssh/id_ed25519"),
            ("network", "connect", f"127.0.0.1:{port}"),
        },
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, client) -> Iterator[dict]:
    """One audit-mode build of the whole corpus, with a loopback listener on the host."""
    home = tmp_path_factory.mktemp("attacks") / "farm-home"
    listener = Listener()
    before = tree_digest(CORPUS)
    try:
        done = farm(
            home,
            "build",
            str(CORPUS),
            "--json",
            "--mode",
            "audit",
            "--env",
            f"FARM_ATTACK_PORT={listener.port}",
        )
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    yield {
        "out": out,
        "home": home,
        "port": listener.port,
        "received": listener.received,
        "source_unchanged": tree_digest(CORPUS) == before,
        "report": farm(home, "report", out["id"]).stdout,
    }
    assert farm_containers(client, home) == []


@pytest.mark.parametrize(
    "package",
    ["net-attack", "fs-attack", "priv-attack", "secrets-attack", "persist-attack", "macro-attack"],
)
def test_each_attack_is_recorded_and_attributed(corpus: dict, package: str) -> None:
    want = {who: got for who, got in expected(corpus["port"]).items() if who[0] == package}
    actions = [a for a in corpus["out"]["blocked_actions"] if a["package"] == package]
    got: dict[tuple, set] = {}
    for a in actions:
        got.setdefault((a["package"], a["version"], a["role"]), set()).add(
            (a["kind"], a["operation"], a["target"])
        )
    assert got == want
    assert len(actions) == len(next(iter(want.values())))  # each attempt recorded once


def test_nothing_is_attributed_to_an_innocent_crate(corpus: dict) -> None:
    packages = {a["package"] for a in corpus["out"]["blocked_actions"]}
    assert packages == {who[0] for who in expected(corpus["port"])}


def test_proc_macro_names_the_crate_being_compiled(corpus: dict) -> None:
    macro = [a for a in corpus["out"]["blocked_actions"] if a["role"] == "proc macro"]
    assert {(a["compiling"], a["executable"]) for a in macro} == {("victim", "/usr/bin/rustc")}
    assert "macro-attack 0.6.0 (proc macro, compiling victim):" in corpus["report"]


def test_every_action_says_which_process_did_it(corpus: dict) -> None:
    for a in corpus["out"]["blocked_actions"]:
        assert a["time_ns"] > 0 and a["pid"] > 1 and a["process_name"], a
        assert a["executable"].startswith("/") and a["argv"], a
        if a["kind"] != "persistence":  # judged at the end, not at a syscall
            assert a["cwd"].startswith("/src"), a
    errnos = {(a["kind"], a["target"]): a["errno"] for a in corpus["out"]["blocked_actions"]}
    assert errnos[("network", f"127.0.0.1:{corpus['port']}")] == "ECONNREFUSED"
    assert errnos[("sensitive_read", "/etc/shadow")] == "EACCES"
    assert errnos[("privilege", "uid/gid 0")] == "EPERM"


def test_the_attacks_failed_as_seen_from_the_host(corpus: dict) -> None:
    assert corpus["received"] == []  # the host's loopback listener got nothing
    assert corpus["source_unchanged"]  # the read-only source is intact
    assert not Path("/usr/bin/fs-attack-pwned").exists()


def test_audit_mode_keeps_the_build_result(corpus: dict) -> None:
    out = corpus["out"]
    assert (out["status"], out["exit_code"]) == ("succeeded", 0)
    assert [a["path"] for a in out["artifacts"]] == ["target/release/victim"]
    assert out["observation"]["mode"] == "audit"
    assert out["observation"]["quarantine_reasons"] == []
    assert out["observation"]["dropped"] == 0 and out["observation"]["complete"]


# -- enforce mode on a quick, non-cargo build ------------------------------------

SNOOP = ["sh", "-c", "cat /etc/shadow; echo built > /out/result"]


def snoop(home: Path, tmp_path: Path, *flags: str, **env: str) -> tuple[int, dict]:
    src = tmp_path / "src" / "proj"
    src.mkdir(parents=True, exist_ok=True)
    (src / "README").write_text("a build that also reads /etc/shadow\n")
    cli = ["build", str(src), "--json", "--output", "out/result", *flags, "--", *SNOOP]
    done = farm(home, *cli, **env)
    return done.returncode, json.loads(done.stdout)


def test_enforce_is_the_default_and_quarantines(home: Path, tmp_path: Path) -> None:
    code, out = snoop(home, tmp_path)
    assert (code, out["status"], out["artifacts"]) == (3, "quarantined", [])
    assert out["observation"]["mode"] == "enforce"
    [action] = out["blocked_actions"]
    assert (action["kind"], action["target"], action["executable"]) == (
        "sensitive_read",
        "/etc/shadow",
        "/usr/bin/cat",
    )
    # The output was built, but nothing of it reached the store.
    store = Store(home)
    assert all(blob.read_bytes() != b"built\n" for _, blob in store.all_blobs())
    report = farm(home, "report", out["id"])
    assert "QUARANTINED: 1 blocked actions not allowed by policy" in report.stdout
    assert "/usr/bin/cat: 1 action" in report.stdout
    assert "sensitive_read  open /etc/shadow blocked (EACCES)" in report.stdout
    machine = json.loads(farm(home, "report", out["id"], "--json").stdout)
    assert machine["packages"][0]["kinds"] == ["sensitive_read"]
    assert machine["actions"][0]["pid"] == action["pid"]


def test_audit_mode_lets_the_same_build_stand(home: Path, tmp_path: Path) -> None:
    code, out = snoop(home, tmp_path, "--mode", "audit")
    assert (code, out["status"]) == (0, "succeeded")
    assert [a["path"] for a in out["artifacts"]] == ["out/result"]
    assert [a["target"] for a in out["blocked_actions"]] == ["/etc/shadow"]


def test_an_allow_rule_in_the_spec_lets_enforce_pass(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "build.toml"
    spec.write_text(
        '[observe]\nmode = "enforce"\n'
        '[[observe.allow]]\nkind = "sensitive_read"\nexecutable = "*/cat"\n'
    )
    code, out = snoop(home, tmp_path, "--spec", str(spec))
    assert (code, out["status"]) == (0, "succeeded"), out
    assert [(a["target"], a["allowed"]) for a in out["blocked_actions"]] == [("/etc/shadow", True)]


def test_an_allow_rule_that_allows_everything_is_refused(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "build.toml"
    spec.write_text("[observe]\n[[observe.allow]]\n")
    src = tmp_path / "p"
    src.mkdir()
    done = farm(home, "build", str(src), "--spec", str(spec), "--", "true")
    assert done.returncode == 2
    assert "observe.allow[0]: an allow rule needs at least one of" in done.stderr
    assert not (home / "index.sqlite").exists() or Store(home).list() == []


def test_report_through_the_service(serve, home: Path, tmp_path: Path) -> None:
    served = serve("--source-root", str(tmp_path / "src"))
    code, out = snoop(home, tmp_path, FARM_SERVER=served.url)
    assert (code, out["status"]) == (3, "quarantined")  # enforce applies in the service too
    elsewhere = tmp_path / "client-home"  # an empty store: the report must come over HTTP
    report = farm(elsewhere, "report", out["id"], FARM_SERVER=served.url)
    assert report.returncode == 0, report.stderr
    assert "/usr/bin/cat: 1 action" in report.stdout
    assert "sensitive_read  open /etc/shadow blocked (EACCES)" in report.stdout


def test_names_are_resolved_in_the_sandbox_and_reported(corpus: dict) -> None:
    """dns-attack resolves a name and connects (every address of it, each protocol
    glibc tries), then smuggles the planted AWS key id out in a DNS label."""
    want = expected(corpus["port"])[("dns-attack", "0.10.0", "build script")]
    actions = [a for a in corpus["out"]["blocked_actions"] if a["package"] == "dns-attack"]
    assert {(a["kind"], a["operation"], a["target"]) for a in actions} == want
    connects = [a for a in actions if a["target"].startswith("exfil.example.net")]
    assert {(a["address"], a["port"], a["errno"]) for a in connects if a["protocol"] == "tcp"} == {
        ("198.18.0.1", 443, "EHOSTUNREACH"),
        ("2001:2::1", 443, "EHOSTUNREACH"),
    }
    report = corpus["report"]
    assert "\ndns-attack 0.10.0 (build script): 4 actions\n" in report
    assert "resolve exfil.example.net → connect :443/tcp blocked (EHOSTUNREACH) (x2)" in report
    leak = [a for a in actions if a["exfiltrated"]]
    assert [(a["target"], a["severity"]) for a in leak] == [
        ("[honeytoken:aws].t.example.net", "high")
    ]
    assert "EXFILTRATION: planted aws credentials in later actions" in corpus["report"]

"""tests/fixtures/attacks/syscall-attack in gVisor: the corpus's attack classes through
every syscall farm traces that the rest of the corpus does not make (open and creat
rather than openat, setgid/setresuid/setresgid, pivot_root, umount2, the module calls,
setns, sendmsg/sendmmsg, a bind to every address, and each raw file call on the
read-only source). Each is recorded once, classified and blamed on the build script,
so every trace point farm enables has an attack that needs it (issue 14,
tests/unit/test_point_needs.py)."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import ROOT, farm, farm_containers, tree_digest

SOURCE = ROOT / "tests" / "fixtures" / "attacks" / "syscall-attack"
NO_PATH = ""  # raw syscalls: gVisor records no path

EXPECTED = {
    ("sensitive_read", "open", "/etc/shadow"),
    ("fs_write_denied", "open for write", "/usr/bin/syscall-attack-pwned"),
    ("privilege", "setgid", "uid/gid 0"),
    ("privilege", "setresuid", "uid/gid 0"),
    ("privilege", "setresgid", "uid/gid 0"),
    ("privilege", "pivot_root", NO_PATH),
    ("privilege", "umount2", NO_PATH),
    ("privilege", "init_module", NO_PATH),
    ("privilege", "delete_module", NO_PATH),
    ("privilege", "setns", NO_PATH),
    ("privilege", "finit_module", NO_PATH),
    ("network", "sendmsg", NO_PATH),
    ("network", "sendmmsg", NO_PATH),
    ("network", "bind", "0.0.0.0:47003"),
    *(
        ("fs_write_denied", call, NO_PATH)
        for call in (
            "truncate",
            "mkdir",
            "rmdir",
            "link",
            "symlink",
            "chown",
            "mkdirat",
            "unlinkat",
            "renameat",
            "symlinkat",
            "fchmodat",
            "renameat2",
        )
    ),
}


def test_every_traced_syscall_is_recorded_and_blamed(tmp_path: Path, client) -> None:
    home = tmp_path / "farm-home"
    before = tree_digest(SOURCE)
    done = farm(home, "build", str(SOURCE), "--json")
    out = json.loads(done.stdout)
    assert (done.returncode, out["status"]) == (3, "quarantined"), done.stderr
    actions = out["blocked_actions"]
    assert {(a["package"], a["version"], a["role"]) for a in actions} == {
        ("syscall-attack", "0.12.0", "build script")
    }
    got = [(a["kind"], a["operation"], a["target"]) for a in actions]
    assert set(got) == EXPECTED
    assert len(got) == len(EXPECTED)  # each attempt recorded once
    assert out["observation"]["complete"] and out["observation"]["dropped"] == 0
    assert tree_digest(SOURCE) == before  # the read-only source is intact
    assert not Path("/usr/bin/syscall-attack-pwned").exists()
    assert farm_containers(client, home) == []

"""Git repositories with a hostile configuration, for tests of farm.epoch and friends.

Used by tests/unit/test_source_git.py and the e2e tests of ``farm build`` and ``farm
serve``. The repository is made by git run with every configuration source disabled
(``clean_git``), while its own config is still the harmless one ``git init`` wrote;
only then is the hostile configuration written, as plain files. git is never run on
the tree again: every knob below names a script that appends to a marker file, so any
marker that appears means something ran a program the tree chose.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

#: git with no system, global or user configuration, no hooks and no fsmonitor.
CLEAN_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "LC_ALL": "C",
}
CLEAN_FLAGS = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "--no-pager"]

#: Every configuration key we know of that makes git run a program.
KNOBS = [
    "gpg.program",
    "gpg.openpgp.program",
    "gpg.ssh.program",
    "gpg.x509.program",
    "core.fsmonitor",
    "core.pager",
    "pager.log",
    "core.sshCommand",
    "core.editor",
    "core.askPass",
    "sequence.editor",
    "diff.external",
    "credential.helper",
    "core.alternateRefsCommand",
    "uploadpack.packObjectsHook",
    "gpg.ssh.defaultKeyCommand",
    "filter.evil.clean",
    "filter.evil.smudge",
    "filter.evil.process",
    "diff.evil.textconv",
    "diff.evil.command",
    "merge.evil.driver",
]
HOOKS = ["post-checkout", "pre-commit", "post-rewrite", "reference-transaction", "pre-auto-gc"]


def clean_git(repo: Path, *args: str, date: int | None = None, stdin: bytes | None = None) -> str:
    env = dict(CLEAN_ENV)
    if date is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{date} +0000"
    done = subprocess.run(
        ["git", *CLEAN_FLAGS, "-C", str(repo), *args],
        env=env,
        input=stdin,
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


def commit_all(repo: Path, message: str, date: int) -> str:
    clean_git(repo, "add", "-A")
    clean_git(repo, "commit", "-q", "--allow-empty", "-m", message, date=date)
    return clean_git(repo, "rev-parse", "HEAD")


def signed_commit(repo: Path, message: str, date: int) -> str:
    """A commit carrying a gpgsig header, written as a raw object and put on the branch,
    so `git log` with log.showSignature would hand it to gpg.program."""
    tree = clean_git(repo, "write-tree")
    parent = clean_git(repo, "rev-parse", "HEAD")
    sig = "-----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAdFiEE\n -----END PGP SIGNATURE-----"
    body = (
        f"tree {tree}\nparent {parent}\n"
        f"author t <t@example.invalid> {date} +0000\n"
        f"committer t <t@example.invalid> {date} +0000\n"
        f"gpgsig {sig}\n\n{message}\n"
    )
    oid = clean_git(repo, "hash-object", "-t", "commit", "-w", "--stdin", stdin=body.encode())
    clean_git(repo, "update-ref", "HEAD", oid)
    return oid


def script(path: Path, marker_dir: Path, name: str) -> Path:
    path.write_text(f"#!/bin/sh\necho {name} >> {marker_dir}/{name}\ncat >/dev/null\n")
    path.chmod(0o755)
    return path


@dataclass
class Hostile:
    repo: Path
    markers: Path
    epoch: int  # the newest commit's committer time (the signed commit)
    sub_epoch: int  # the newest commit that touched crate/

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())


def hostile_repo(root: Path, markers: Path, *, packed: bool = False) -> Hostile:
    """A repository at ``root`` with a crate in ``crate/`` and three commits: the second
    (signed) touches the crate, the third (signed) only README. Then every
    program-running knob is set, so `git log` on the root or on crate/ would run them."""
    markers.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True)
    clean_git(root, "init", "-q", "-b", "main")
    crate = root / "crate"
    crate.mkdir()
    (crate / "data.txt").write_text("one\n")
    (root / ".gitattributes").write_text("* filter=evil diff=evil merge=evil\n")
    commit_all(root, "first", 1_500_000_000)
    (crate / "data.txt").write_text("two\n")
    clean_git(root, "add", "-A")
    signed_commit(root, "touch the crate, signed", 1_600_000_000)
    (root / "README").write_text("docs\n")
    clean_git(root, "add", "-A")
    signed_commit(root, "signed, README only", 1_650_000_000)
    if packed:
        clean_git(root, "gc", "-q", "--aggressive", "--prune=now")
    write_hostile_config(root / ".git", markers)
    return Hostile(root, markers, 1_650_000_000, 1_600_000_000)


def write_hostile_config(git_dir: Path, markers: Path) -> None:
    """Plain files only: a config setting every knob, more of it behind include and
    includeIf, hooks, and alternates pointing outside the tree."""
    bin_dir = git_dir / "evil-bin"
    bin_dir.mkdir()
    lines = ["[core]", "\tbare = false", "\trepositoryformatversion = 0"]
    lines += ["[log]", "\tshowSignature = true", "[gpg]", "\tformat = openpgp"]
    for knob in KNOBS:
        section, _, key = knob.rpartition(".")
        head, _, sub = section.partition(".")
        lines.append(f'[{head} "{sub}"]' if sub else f"[{head}]")
        lines.append(f"\t{key} = {script(bin_dir / knob, markers, knob)}")
    hooks = git_dir / "evil-hooks"
    hooks.mkdir()
    for hook in HOOKS:
        script(hooks / hook, markers, f"hook-{hook}")
    lines += ["[core]", f"\thooksPath = {hooks}"]
    more = git_dir / "more.config"
    more.write_text(
        f"[gpg]\n\tprogram = {script(bin_dir / 'include-gpg', markers, 'include.gpg')}\n"
        f"[core]\n\tfsmonitor = {script(bin_dir / 'include-fsm', markers, 'include.fsmonitor')}\n"
    )
    cond = git_dir / "cond.config"
    cond.write_text(
        f"[core]\n\tpager = {script(bin_dir / 'includeif-pager', markers, 'includeIf.pager')}\n"
        f"[gpg]\n\tprogram = {script(bin_dir / 'includeif-gpg', markers, 'includeIf.gpg')}\n"
    )
    lines += ["[include]", f"\tpath = {more}", '[includeIf "gitdir:/"]', f"\tpath = {cond}"]
    (git_dir / "config").write_text("\n".join(lines) + "\n")
    for hook in HOOKS:  # also the default hooks directory
        script(git_dir / "hooks" / hook, markers, f"default-hook-{hook}")
    outside = git_dir.parent.parent / "alternate-objects"
    outside.mkdir(exist_ok=True)
    (git_dir / "objects" / "info").mkdir(exist_ok=True)
    (git_dir / "objects" / "info" / "alternates").write_text(f"{outside}\n")


def gitdir_file_tree(root: Path, target_git: Path) -> Path:
    """A tree whose ``.git`` is a file pointing at a repository elsewhere."""
    root.mkdir(parents=True)
    (root / ".git").write_text(f"gitdir: {target_git}\n")
    (root / "data.txt").write_text("x\n")
    return root


def git_log_epoch(source: Path) -> int | None:
    """What git itself says, asked with every configuration source disabled. Only for a
    repository with a harmless config (before ``write_hostile_config``)."""
    out = clean_git(source, "log", "-1", "--format=%ct", "--", ".")
    return int(out) if out else None

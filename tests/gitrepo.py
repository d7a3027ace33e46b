"""A git repository made by a test, as a bare repository servable over "dumb" HTTP.

git runs here only on trees the test writes itself, and with no configuration anyway
(farm.fetch.git.git_env), as the project's safety rules ask.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from farm.fetch.git import git_env

_TEST_ENV = {
    "GIT_ALLOW_PROTOCOL": "file:http:https",  # the test's own clone of its own work tree
    "GIT_COMMITTER_DATE": "1700000000 +0000",
    "GIT_AUTHOR_DATE": "1700000000 +0000",
}


def _git(cwd: Path, *args: str) -> str:
    home = cwd.parent / "git-home"
    home.mkdir(exist_ok=True)
    ident = ["-c", "user.name=farm test", "-c", "user.email=test@farm.invalid"]
    done = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *ident, *args],
        cwd=cwd,
        env={**git_env(home), **_TEST_ENV},
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    return done.stdout.strip()


def bare_repo(
    root: Path, files: dict[str, bytes], links: dict[str, str] | None = None
) -> tuple[Path, str]:
    """Commit ``files`` (and symlinks) on branch main; return the bare repo and the commit."""
    work = root / "work"
    work.mkdir(parents=True)
    _git(work, "init", "-q", "--template=", "-b", "main")
    for rel, data in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    for rel, target in (links or {}).items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).symlink_to(target)
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "test")
    commit = _git(work, "rev-parse", "HEAD")
    bare = root / "repo.git"
    _git(root, "clone", "-q", "--bare", "--template=", str(work), str(bare))
    _git(bare, "update-server-info")
    return bare, commit

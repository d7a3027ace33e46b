"""SOURCE_DATE_EPOCH of a source tree: the time of the last git commit that touched it.

Callers: ``farm.runner.resolve`` fills ``BuildSpec.source_date_epoch`` from here when the
spec gives none, so the build's clock comes from the source, not from when it ran.

The answer is what ``git log -1 --format=%ct -- .`` run in the source directory says,
but git is never run: the tree is untrusted, farm is root, and git would honour the
tree's own configuration, which can name programs to run. ``farm.gitread`` reads the
repository's files instead. The walk is git's default history simplification: from
HEAD, a commit whose copy of the source directory equals one of its parents' is
skipped in favour of the first such parent; the first commit that differs from all its
parents (or a root commit that has the directory) is the answer.

Bounds: at most MAX_COMMITS commits are walked, and farm.gitread caps object sizes and
the bytes inflated. When a bound is hit or an object in the history is missing or
corrupt, the answer falls back to HEAD's own commit time (still a pure function of the
repository) and a warning says so; when HEAD itself cannot be read, there is no answer
(None) and the build uses farm's fixed default epoch. A ``.git`` that is a file (a
worktree or submodule pointing elsewhere) or a symlink is not followed: no answer.
The repository is looked for in the source directory and its parents, never above
``within`` (``farm serve``'s source directory) and never across a filesystem boundary.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from farm.confine import Outside, open_beneath, open_dir, relative_parts
from farm.gitread import GitError, Repo

log = logging.getLogger("farm.epoch")

MAX_COMMITS = 50_000
MAX_MEMO = 1 << 16
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_TREE_MODE = 0o40000


@dataclass(frozen=True)
class Epoch:
    """The epoch, or None; ``note`` says why it is not the plain answer."""

    value: int | None
    note: str | None = None


def commit_epoch(source: Path, within: Path | None = None) -> int | None:
    """Commit time of the newest commit touching ``source``, or None outside a git tree."""
    epoch = read_epoch(source, within)
    if epoch.note:
        log.warning("SOURCE_DATE_EPOCH of %s: %s", source, epoch.note)
    return epoch.value


def read_epoch(source: Path, within: Path | None = None) -> Epoch:
    """Like ``commit_epoch``, with the reason when the answer is a fallback or None."""
    try:
        base, parts = _anchor(source, within)
    except (Outside, OSError) as exc:
        return Epoch(None, f"cannot open the source ({exc})")
    try:
        found = _find_git(base, parts)
        if isinstance(found, str):
            return Epoch(None, found) if found else Epoch(None)
        git_fd, path = found
        repo = Repo(git_fd)
        try:
            return _newest_touching(repo, path)
        finally:
            repo.close()
            os.close(git_fd)
    except (GitError, OSError) as exc:
        return Epoch(None, f"cannot read the repository: {exc}")
    finally:
        os.close(base)


def _anchor(source: Path, within: Path | None) -> tuple[int, tuple[str, ...]]:
    """A descriptor to search from and the source's parts below it."""
    if within is None:  # `farm build`: the user's own spelling of their tree
        within, source = Path("/"), source.resolve()
    parts = relative_parts(source, within)
    os.close(open_dir(source, within))  # the source itself must open beneath `within`
    return os.open(within, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), parts


def _find_git(base: int, parts: tuple[str, ...]) -> tuple[int, tuple[str, ...]] | str:
    """``(.git descriptor, source path inside the repository)``, or why there is none
    ("" when there simply is no repository)."""
    src = open_beneath(base, parts)
    try:
        device = os.fstat(src).st_dev
    finally:
        os.close(src)
    for top in range(len(parts), -1, -1):
        top_fd = open_beneath(base, parts[:top])
        try:
            if os.fstat(top_fd).st_dev != device:
                return ""  # git does not look across a filesystem boundary either
            try:
                return open_beneath(top_fd, [".git"]), parts[top:]
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:  # a file (gitdir: …) or a symlink
                    return ".git is a file or a symlink; worktrees and submodules are not followed"
                if exc.errno != errno.ENOENT:
                    raise
        finally:
            os.close(top_fd)
    return ""


def _newest_touching(repo: Repo, path: tuple[str, ...]) -> Epoch:
    commit = repo.commit(repo.head())
    head_time = commit.time
    memo: dict[tuple[str, int], str | None] = {}
    try:
        sub = _subtree(repo, commit.tree, path, memo)
        for _ in range(MAX_COMMITS):
            if not commit.parents:
                return Epoch(commit.time if sub not in (None, EMPTY_TREE) else None)
            same = None
            for parent_id in commit.parents:
                parent = repo.commit(parent_id)
                if _subtree(repo, parent.tree, path, memo) == sub:
                    same = parent
                    break
            if same is None:
                return Epoch(commit.time)
            commit = same
        raise GitError(f"the history is longer than {MAX_COMMITS} commits")
    except GitError as exc:
        return Epoch(head_time, f"{exc}; using HEAD's commit time instead")


def _subtree(
    repo: Repo, tree: str, path: tuple[str, ...], memo: dict[tuple[str, int], str | None]
) -> str | None:
    """The id of the tree at ``path`` below ``tree``, or None. ``memo`` remembers the
    answer for every tree passed on the way, so a directory that did not change between
    two commits is not read again."""
    passed = []
    found: str | None = tree
    for depth, name in enumerate(path):
        if (tree, depth) in memo:
            found = memo[(tree, depth)]
            break
        passed.append((tree, depth))
        entry = repo.entry(tree, name)
        if entry is None or entry[0] != _TREE_MODE:
            found = None
            break
        tree = found = entry[1]
    if len(memo) > MAX_MEMO:
        memo.clear()
    memo.update(dict.fromkeys(passed, found))
    return found

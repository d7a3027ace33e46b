"""Fetch one commit of a git repository, with git run with no configuration at all.

Callers: ``farm.fetch.phase`` for a lockfile's git dependencies. The URL comes from a
tenant's lockfile, so:

- only hosts the operator allowed (``Settings.git_hosts``) are contacted, over http(s)
  only (``protocol.allow=never`` but for those two: no ``ext::`` command, no ``file://``
  path of the host, no ssh); git follows no redirect (``http.followRedirects=false``);
- git reads no configuration file (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``,
  an empty ``HOME``), runs no hook (``core.hooksPath=/dev/null``), fetches no submodule,
  asks for no credentials, and checks every object it receives (``transfer.fsckObjects``);
- it writes only into a new bare repository farm created (no work tree, so no checkout,
  no attributes, no filters), with a cap on each file it writes (``RLIMIT_FSIZE``) and a
  deadline;
- the commit is then read by farm's own bounded reader (``farm.gitread``), never by git.

The commit id is the lock's full id, so the bytes are what the lock names whatever the
server says (git checks each object's id while indexing the pack).
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from farm.errors import FetchError, LockfileError, RegistryUnreachableError
from farm.gitread import GitError, Repo

_COMMIT = re.compile(r"[0-9a-f]{40}")
#: Entries of one tree walk, and its depth.
MAX_ENTRIES = 100_000
MAX_DEPTH = 64
#: The biggest file git may write (a pack), and how long one fetch may take.
MAX_PACK = 2 << 30
FETCH_SECONDS = 600
_GIT_OPTIONS = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "protocol.allow=never",
    "-c", "protocol.https.allow=always",
    "-c", "protocol.http.allow=always",
    "-c", "http.followRedirects=false",
    "-c", "submodule.recurse=false",
    "-c", "fetch.recurseSubmodules=false",
    "-c", "transfer.fsckObjects=true",
    "-c", "core.fsmonitor=false",
    "-c", "credential.helper=",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
)  # fmt: skip


@dataclass(frozen=True)
class GitSource:
    """A lockfile's ``git+URL?branch=…#COMMIT``: ``url`` for git, the ``query`` cargo's
    source replacement needs (``branch``/``tag``/``rev``), and the full commit id."""

    url: str
    query: tuple[tuple[str, str], ...]
    commit: str

    @classmethod
    def parse(cls, source: str, what: str) -> GitSource:
        rest, _, commit = source.removeprefix("git+").partition("#")
        url, _, query = rest.partition("?")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
            raise LockfileError(f"{what}: git source {url!r} is not an http(s) URL farm fetches")
        if not _COMMIT.fullmatch(commit):
            raise LockfileError(
                f"{what}: the lock names no full commit id for {url}; regenerate it with cargo"
            )
        pairs = []
        for item in filter(None, query.split("&")):
            key, _, value = item.partition("=")
            if key not in ("branch", "tag", "rev") or not value:
                raise LockfileError(f"{what}: unknown git source parameter {item!r}")
            pairs.append((key, value))
        return cls(url, tuple(pairs), commit)

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()


@dataclass(frozen=True)
class TreeFile:
    path: tuple[str, ...]
    mode: int
    oid: str


class Checkout:
    """One fetched commit, read with farm.gitread. Use as a context manager."""

    def __init__(self, tmp: tempfile.TemporaryDirectory[str], repo: Repo, fd: int) -> None:
        self._tmp, self._repo, self._fd = tmp, repo, fd

    def __enter__(self) -> Checkout:
        return self

    def __exit__(self, *exc: object) -> None:
        self._repo.close()
        os.close(self._fd)
        self._tmp.cleanup()

    def files(self, commit: str) -> Iterator[TreeFile]:
        """Every entry of the commit's tree (blobs, links, submodules), depth first."""
        count = 0
        stack = [((), self._repo.commit(commit).tree)]
        while stack:
            prefix, tree = stack.pop()
            if len(prefix) > MAX_DEPTH:
                raise GitError(f"tree deeper than {MAX_DEPTH}")
            for mode, name, oid in _entries(self._repo, tree):
                count += 1
                if count > MAX_ENTRIES:
                    raise GitError(f"more than {MAX_ENTRIES} entries")
                if mode == 0o40000:
                    stack.append(((*prefix, name), oid))
                else:
                    yield TreeFile((*prefix, name), mode, oid)

    def blob(self, oid: str) -> bytes:
        kind, body = self._repo.object(oid)
        if kind != b"blob":
            raise GitError(f"{oid} is a {kind.decode()}, not a blob")
        return body


def fetch_commit(source: GitSource, allowed_hosts: frozenset[str], what: str) -> Checkout:
    """Fetch ``source.commit`` into a new bare repository; raises FetchError when the host
    is not allowed or the commit cannot be fetched (naming the package and the fix)."""
    if source.host not in allowed_hosts:
        raise FetchError(
            f"{what}: git dependency from {source.host}, which is not an allowed git host; "
            f"allow it with --git-host {source.host} (FARM_GIT_HOSTS), or vendor the "
            "dependency into the source tree"
        )
    tmp = tempfile.TemporaryDirectory(prefix="farm-git-")
    try:
        root = Path(tmp.name)
        (root / "home").mkdir()
        doing = f"{what}: cannot fetch {source.url}"
        _git(root, ["init", "-q", "--bare", "--template=", str(root / "repo.git")], doing)
        fetched = _git(
            root,
            ["--git-dir", str(root / "repo.git"), "fetch", "-q", "--no-tags", "--depth=1",
             source.url, f"{source.commit}:refs/farm/commit"],
            doing,
            check=False,
        )  # fmt: skip
        if fetched.returncode != 0:  # a server that refuses wants by id: all heads and tags
            _git(
                root,
                ["--git-dir", str(root / "repo.git"), "fetch", "-q", source.url,
                 "+refs/heads/*:refs/farm/heads/*", "+refs/tags/*:refs/farm/tags/*"],
                doing,
            )  # fmt: skip
        fd = os.open(root / "repo.git", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        checkout = Checkout(tmp, Repo(fd), fd)
        try:
            checkout._repo.commit(source.commit)
        except GitError as exc:
            checkout.__exit__()
            raise FetchError(f"{what}: commit {source.commit} not in {source.url}: {exc}") from None
        return checkout
    except BaseException:
        tmp.cleanup()
        raise


def git_env(home: Path) -> dict[str, str]:
    """The whole environment git runs with: nothing of farm's or the user's."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_ALLOW_PROTOCOL": "http:https",
    }


def _git(
    root: Path, args: list[str], doing: str, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(
            ["git", *_GIT_OPTIONS, *args],
            cwd=root / "home",
            env=git_env(root / "home"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=FETCH_SECONDS,
            preexec_fn=_limit_files,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RegistryUnreachableError(f"{doing}: git took longer than {FETCH_SECONDS} s") from None
    if check and done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()[-600:]
        raise RegistryUnreachableError(f"{doing}: {said}")
    return done


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_PACK, MAX_PACK))


def _entries(repo: Repo, tree: str) -> Iterator[tuple[int, str, str]]:
    kind, body = repo.object(tree)
    if kind != b"tree":
        raise GitError(f"{tree} is not a tree")
    i = 0
    while i < len(body):
        space = body.find(b" ", i)
        nul = body.find(b"\0", space)
        if space < 0 or nul < 0 or nul + 21 > len(body):
            raise GitError(f"tree {tree} is malformed")
        name = body[space + 1 : nul].decode("utf-8", errors="strict")
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise GitError(f"tree {tree} has an entry named {name!r}")
        yield int(body[i:space], 8), name, body[nul + 1 : nul + 21].hex()
        i = nul + 21

"""Collect a finished build's declared outputs into the store, never following links.

Callers: ``farm.runner`` after the sandbox has exited, and ``farm.k8s.collector`` in a
build pod (which also opens the source's Cargo.lock with :func:`open_no_follow`). The
build controlled every byte of its target/ and out/ dirs, so each match is checked with
lstat, opened with O_NOFOLLOW, re-checked with fstat, and capped in size. A symlink, FIFO, device or
socket is refused with a reason, and so is a hard link to anything outside the build.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from farm.errors import CollectionError
from farm.policy import BuildDirs
from farm.records import Artifact, Refusal
from farm.spec import OutputLimits
from farm.store import Store, TooLarge


@dataclass
class Collected:
    artifacts: list[Artifact] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    total: int = 0


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` spans directories, ``*`` and ``?`` stay within one path component."""
    out = []
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        if part in ("**", "**/"):
            out.append("(?:.*/)?" if part == "**/" else ".*")
        elif part == "*":
            out.append("[^/]*")
        elif part == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z")


def collect(dirs: BuildDirs, globs: list[str], limits: OutputLimits, store: Store) -> Collected:
    result = Collected()
    for root_name in ("target", "out"):
        patterns = [glob_regex(g) for g in globs if PurePosixPath(g).parts[0] == root_name]
        if patterns:
            _collect_root(dirs.output_root(root_name), root_name, patterns, limits, store, result)
    result.artifacts.sort(key=lambda a: a.path)
    return result


def _collect_root(
    root: Path,
    name: str,
    patterns: list[re.Pattern[str]],
    limits: OutputLimits,
    store: Store,
    result: Collected,
) -> None:
    entries = list(_walk(root))
    links = Counter((st.st_dev, st.st_ino) for _, st in entries if stat.S_ISREG(st.st_mode))
    for rel, st in entries:
        path = f"{name}/{rel}"
        if stat.S_ISDIR(st.st_mode) or not any(p.match(path) for p in patterns):
            continue
        # A name that is not UTF-8 cannot be recorded faithfully; keep an escaped form.
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        reason = "name is not valid UTF-8" if shown != path else _refusal(st, links, limits, result)
        path = shown
        if reason:
            result.refused.append(Refusal(path=path, reason=reason))
            continue
        _store_one(root / rel, path, st, limits, store, result)


#: A hostile build can make millions of entries; past this many, collection stops.
MAX_ENTRIES = 200_000


def _walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry under root with its lstat, iteratively (depth is no crash); symlinked
    dirs are listed, not entered. Raises CollectionError past MAX_ENTRIES."""
    found: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                child = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                found.append((child, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(child)
        if len(found) > MAX_ENTRIES:
            raise CollectionError(f"the build left more than {MAX_ENTRIES} entries in {root}")
    return sorted(found, key=lambda e: e[0])


def _refusal(
    st: os.stat_result, links: Counter, limits: OutputLimits, result: Collected
) -> str | None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "symlink: farm never follows links out of a build"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "FIFO or socket: not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node: not a file"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    # cargo hard-links target/release/<bin> to deps/; that is fine while every link is
    # inside this build's own directory. A link to anything else is refused.
    if st.st_nlink > links[(st.st_dev, st.st_ino)]:
        return "hard link to a file outside the build's directories"
    if st.st_size > limits.max_file:
        return f"{st.st_size} bytes exceeds the per-file cap of {limits.max_file}"
    if result.total + st.st_size > limits.max_total:
        return f"would exceed the total output cap of {limits.max_total} bytes"
    if len(result.artifacts) >= limits.max_files:
        return f"more than {limits.max_files} output files"
    return None


def open_no_follow(path: Path) -> BinaryIO:
    """Open ``path`` for reading without following a final symlink or blocking on a
    FIFO; raises OSError. Callers fstat the result: what was opened is what counts."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    return os.fdopen(fd, "rb")


def _store_one(
    host: Path,
    path: str,
    st: os.stat_result,
    limits: OutputLimits,
    store: Store,
    result: Collected,
) -> None:
    try:
        fh = open_no_follow(host)
    except OSError as exc:
        result.refused.append(Refusal(path=path, reason=f"cannot open: {exc.strerror}"))
        return
    with fh:
        now = os.fstat(fh.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            result.refused.append(Refusal(path=path, reason="changed while being collected"))
            return
        room = min(limits.max_file, limits.max_total - result.total)
        try:
            sha, size = store.put_stream(fh, limit=room)
        except TooLarge:
            result.refused.append(Refusal(path=path, reason=f"grew past the cap of {room} bytes"))
            return
    result.total += size
    result.artifacts.append(Artifact(path=path, sha256=sha, size=size))

"""One spelling for every path a build can give to the kernel for the same object, so
that classification matches what was opened, not how it was written.

Callers: ``farm.observe.classify`` (each open's path before it is judged, and the fd
table it keeps). gVisor records a path as the process passed it, unresolved, so a build
could hide ``/etc/shadow`` as ``//etc//shadow``, ``/tmp/../etc/shadow``,
``/proc/self/root/etc/shadow`` or ``/proc/thread-self/fd/3``. :func:`canonical` undoes
each of these lexically (docs/observer.md, "Path spellings", lists them and what a
record cannot show: symlinks the build made itself).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

#: The standard streams are the process's own fds 0-2 (``/dev/stdin`` -> ``/proc/self/fd/0``).
_STD = {"stdin": "0", "stdout": "1", "stderr": "2"}
#: Enough magic-link hops for any real nesting (``/proc/self/root/proc/self/cwd/…``);
#: past this many, the rest of the path is taken literally.
_MAX_HOPS = 32


@dataclass(frozen=True)
class Where:
    """What a path is relative to: the calling process, its cwd, and the sandbox's
    open fds (``(tgid, fd)`` -> the canonical path it was opened from, as far as the
    record shows)."""

    tgid: int
    cwd: str = "/"
    fds: Mapping[tuple[int, int], str] | None = None


def lexical(path: str) -> str:
    """``//``, ``.`` and ``..`` collapsed, and nothing else (no link is followed)."""
    if path.startswith("/"):
        return canonical(path, Where(0, "/", None), links=False)
    return posixpath.normpath(path) if path else path


def canonical(path: str, where: Where, *, links: bool = True) -> str:
    """The one spelling of the absolute ``path`` for the process ``where`` describes.

    Walked one component at a time, as the kernel does: ``//`` and ``.`` vanish, ``..``
    drops the component before it, and proc's magic links are replaced by their target
    *before* a following ``..`` applies: ``/proc/self``, ``/proc/thread-self`` and
    ``/proc/<pid>/task/<tid>`` become ``/proc/<pid>``; ``…/root`` becomes ``/`` (the
    sandbox has one root); ``…/cwd`` the cwd (the caller's: other processes' cwds are
    not recorded); ``…/fd/N``, ``/dev/fd/N`` and ``/dev/std*`` the path fd N was opened
    from, when the record shows it. A symlink the build made is not known here: a
    ``..`` after one is taken lexically (docs/observer.md, "Path spellings").
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    todo.reverse()
    out: list[str] = []
    hops = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
        while links and out and hops < _MAX_HOPS and (target := _magic(out, where)) is not None:
            hops += 1  # a target may be a link again (/dev/stdin -> /proc/<pid>/fd/0)
            out = target
    return "/" + "/".join(out)


def _magic(parts: list[str], where: Where) -> list[str] | None:
    """The target of ``parts`` if it names one of proc's (or /dev's) links, else None."""
    me = str(where.tgid)
    if parts[0] == "dev" and len(parts) == 2:
        if parts[1] == "fd":
            return ["proc", me, "fd"]
        if parts[1] in _STD:
            return ["proc", me, "fd", _STD[parts[1]]]
    if parts[0] != "proc" or len(parts) < 2:
        return None
    if len(parts) == 2 and parts[1] in ("self", "thread-self"):
        return ["proc", me]
    if len(parts) == 4 and parts[2] == "task":
        return parts[:2]  # a thread's view of its process: the same objects
    if len(parts) == 3 and parts[2] == "root":
        return []
    if len(parts) == 3 and parts[2] == "cwd":
        return [p for p in where.cwd.split("/") if p]
    if len(parts) == 4 and parts[2] == "fd" and parts[1].isdigit() and parts[3].isdigit():
        opened = (where.fds or {}).get((int(parts[1]), int(parts[3])))
        return [p for p in opened.split("/") if p] if opened else None
    return None

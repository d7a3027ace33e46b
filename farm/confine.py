"""Open a source tree beneath an allowed directory without following any symlink.

Callers: ``farm.service`` (``SourcePolicy.check`` at submission and again before a
worker runs a build), ``farm.runner`` (``resolve`` and the snapshot open the source
through ``open_dir``), ``farm.snapshot`` and ``farm.epoch`` (``open_beneath`` for every
entry they read). farm runs as root and the trees belong to tenants, who may swap any
component of their path for a symlink at any moment: a path is therefore never resolved
and then opened again by name. Each component is opened relative to the descriptor of
its parent with ``O_NOFOLLOW``, so what is read is what lies beneath the allowed
directory at the time it is read.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from farm.errors import InputError
from farm.spec import BuildSpec

#: Flags for a directory opened as one step of a walk.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags for a file read as root: never a link, never block on a FIFO or a tty.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Outside(Exception):
    """The path is not beneath the allowed directory (or reaches it through a symlink)."""


def open_beneath(base_fd: int, parts: Sequence[str], flags: int = DIR_FLAGS) -> int:
    """Open ``parts`` below ``base_fd``, one component at a time, following no symlink.

    Every component but the last is opened as a directory; the last with ``flags``
    (plus ``O_NOFOLLOW``). An empty ``parts`` duplicates ``base_fd``. Raises OSError
    (ELOOP for a symlink, ENOENT, ENOTDIR…); ``..`` and ``/`` in a part are refused.
    """
    if any(p in ("", ".", "..") or "/" in p for p in parts):
        raise OSError(errno.EINVAL, f"not a plain relative path: {'/'.join(parts)!r}")
    if not parts:
        return os.dup(base_fd)
    fd = base_fd
    try:
        for part in parts[:-1]:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            if fd != base_fd:
                os.close(fd)
            fd = child
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        if fd != base_fd:
            os.close(fd)


def relative_parts(path: Path, within: Path) -> tuple[str, ...]:
    """``path``'s components below ``within`` (as given or resolved), by spelling only.

    Raises Outside for a relative path, a ``..`` component or another prefix.
    """
    if not path.is_absolute() or ".." in path.parts:
        raise Outside(str(path))
    # `within` is the operator's directory: its own spelling may go through a link.
    for base in dict.fromkeys([within, within.resolve()]):
        if path.is_relative_to(base):
            return PurePosixPath(path.relative_to(base)).parts
    raise Outside(str(path))


def open_dir(path: Path, within: Path | None = None) -> int:
    """A descriptor of the directory ``path``; with ``within``, opened beneath it.

    Without ``within`` (``farm build`` on the user's own tree) the path is opened as the
    user spelled it. Raises Outside, or OSError (ELOOP when a component is a symlink).
    """
    if within is None:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    parts = relative_parts(path, within)
    base = os.open(within, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_beneath(base, parts)
    finally:
        os.close(base)


@dataclass
class SourcePolicy:
    """Where submitted sources may live on this host. With tenants (tokens), each tenant
    is confined to ``root/<tenant>``, so no tenant can build another's tree.

    A path outside gets one answer whether or not it exists, and a path that reaches
    outside through a symlink gets that same answer, wherever the link points: the
    check opens the source beneath the allowed directory and never follows a link,
    so it learns nothing about the host's filesystem outside and says nothing either.
    """

    root: Path
    per_tenant: bool = False

    def allowed(self, tenant: str) -> Path:
        return self.root / tenant if self.per_tenant else self.root

    def check(self, spec: BuildSpec) -> None:
        """Raises InputError: outside (one message for every reason), missing, not a dir."""
        os.close(self.open(spec.source, spec.tenant))

    def open(self, source: Path, tenant: str) -> int:
        """A descriptor of ``source``, opened beneath the tenant's directory."""
        allowed = self.allowed(tenant)
        try:
            return open_dir(source, allowed)
        except Outside:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise InputError(f"source: {str(source)!r} does not exist") from None
            if exc.errno == errno.ENOTDIR:
                # O_DIRECTORY|O_NOFOLLOW says ENOTDIR for a symlink too, wherever it points.
                raise InputError(
                    f"source: {str(source)!r} is not a directory, or reaches one through a "
                    "symlink; name the project's real directory"
                ) from None
            # ELOOP, EACCES…: the same answer as outside.
        raise InputError(
            f"source: {str(source)!r} is outside this service's source directory "
            f"{str(allowed)!r}; put the project there and name it by its real path "
            "(no symlinks)"
        )

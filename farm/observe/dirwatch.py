"""Wait for a directory's entries to change: Linux inotify, through libc (no dependency).

Callers: ``farm.observe.spool.read_observation``, which waits for the observer daemon to
finish a container's record (a rename to ``.trace``, or a ``.cut`` marker) at the end of
every observed build. A fixed sleep there put up to its whole interval on every build's
teardown; a watch wakes the reader when the daemon writes. The reader still looks again
at least every ``interval`` seconds, so a lost or unsupported watch only costs what the
plain polling did (without inotify, ``wait`` is that sleep).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import select
import time
from pathlib import Path
from types import TracebackType

#: An entry was created, renamed in, or closed after writing (inotify(7)).
IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_CLOSE_WRITE = 0x08
WATCHED = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE
#: The longest a reader sleeps between two looks, watch or no watch.
INTERVAL = 0.1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # The interpreter's own symbols: ctypes.util.find_library runs ldconfig (~20 ms).
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1  # noqa: B018 (present on Linux only)
    except (OSError, AttributeError):
        return None
    return libc


class DirWatch:
    """Entries of one directory changing. Open it BEFORE looking at the directory, then
    ``wait`` after a look found nothing: a change in between is not missed."""

    def __init__(self, directory: Path, interval: float = INTERVAL) -> None:
        self.directory, self.interval = directory, interval
        self._fd: int | None = None

    def __enter__(self) -> DirWatch:
        libc = _libc()
        if libc is None:
            return self
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return self  # out of inotify instances: poll instead
        if libc.inotify_add_watch(fd, os.fsencode(self.directory), WATCHED) < 0:
            os.close(fd)
            return self
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def watching(self) -> bool:
        return self._fd is not None

    def wait(self, timeout: float) -> bool:
        """Sleep until an entry changes or min(``timeout``, interval) has passed; says
        whether a change woke it (always False without a watch)."""
        pause = max(0.0, min(timeout, self.interval))
        if self._fd is None:
            time.sleep(pause)
            return False
        # poll, not select: select refuses a descriptor >= 1024 (FD_SETSIZE), and a
        # busy ``farm serve`` holds that many.
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if not poller.poll(pause * 1000):
            return False
        try:
            while os.read(self._fd, 65536):  # drain: one wake per batch of changes
                pass
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
        return True

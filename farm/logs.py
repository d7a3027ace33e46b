"""Size-capped log capture: a log flood is cut and noted, never held in memory.

Callers: ``farm.runner`` hands ``CappedLog.write`` to a backend as its log sink.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO


class CappedLog:
    """Appends to ``path`` until ``cap`` bytes, then only counts what it drops."""

    def __init__(self, path: Path, cap: int, tail_lines: int = 8) -> None:
        self.path = path
        self.cap = cap
        self.written = 0
        self.dropped = 0
        self._file: BinaryIO = path.open("wb")
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._partial = b""
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            room = max(self.cap - self.written, 0)
            kept = chunk[:room]
            if kept:
                self._file.write(kept)
                self.written += len(kept)
            self.dropped += len(chunk) - len(kept)
            self._remember(chunk[-4096:])

    def _remember(self, chunk: bytes) -> None:
        # Only the last few lines are kept for the progress display.
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()[-512:]
        for line in lines[-self._tail.maxlen :] if self._tail.maxlen else []:
            self._tail.append(line[-200:].decode("utf-8", "replace"))

    def tail(self) -> list[str]:
        with self._lock:
            return list(self._tail)

    def close(self) -> None:
        with self._lock:
            if self.dropped and not self._file.closed:
                note = (
                    f"\n[farm: log truncated at {self.cap} bytes; {self.dropped} bytes dropped]\n"
                )
                self._file.write(note.encode())
            self._file.close()

"""A deduplicating work queue of object keys, like client-go's workqueue.

Callers: ``farm.k8s.controller``: informer handlers ``add`` keys, workers ``get`` and
``done`` them. A key is queued at most once however many events arrive; a key being
processed is never handed to a second worker, and if it changes meanwhile it is queued
again when ``done`` (so no event is lost and no Build is reconciled twice at once).
``add_after`` schedules a retry (with the delay the reconcile asked for).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time


class WorkQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._order: list[str] = []
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._closed = False

    def add(self, key: str) -> None:
        with self._cond:
            if self._closed or key in self._queued:
                return
            if key in self._processing:
                self._dirty.add(key)
                return
            self._queued.add(key)
            self._order.append(key)
            self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key))
            self._cond.notify()

    def _promote_due(self) -> float | None:
        """Move due delayed keys into the queue; return seconds to the next one."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key not in self._queued and key not in self._processing:
                self._queued.add(key)
                self._order.append(key)
            elif key in self._processing:
                self._dirty.add(key)
        return self._delayed[0][0] - now if self._delayed else None

    def get(self, timeout: float | None = None) -> str | None:
        """The next key, or None on shutdown or after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                wait = self._promote_due()
                if self._order and not self._closed:
                    key = self._order.pop(0)
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                waits = [w for w in (wait, left) if w is not None]
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._queued.add(key)
                self._order.append(key)
                self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._order)

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

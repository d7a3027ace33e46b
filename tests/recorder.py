"""A thread-safe TraceSink callback that keeps every event, for the observer tests."""

from __future__ import annotations

import threading

from farm.observe.events import TraceEvent


class Recorder:
    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: TraceEvent) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: str) -> list[TraceEvent]:
        return [e for e in self.events if e.kind == kind]

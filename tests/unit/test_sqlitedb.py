"""Several threads opening a fresh FARM_HOME at once (farm serve's workers) all succeed."""

from __future__ import annotations

import threading
from pathlib import Path

from farm.queue import Queue
from farm.store import Store


def test_concurrent_first_opens_of_a_fresh_home_all_succeed(tmp_path: Path) -> None:
    for attempt in range(5):  # the race is on the first open only: use fresh homes
        home = tmp_path / f"home{attempt}"
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def open_both(
            home: Path = home, start: threading.Barrier = start, errors: list = errors
        ) -> None:
            start.wait()
            try:
                Store(home)
                Queue(home / "queue.sqlite")
            except BaseException as exc:  # collected: a thread's exception is otherwise lost
                errors.append(exc)

        threads = [threading.Thread(target=open_both) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        mode = (home / "index.sqlite").read_bytes()[18:20]
        assert mode == b"\x02\x02", "index.sqlite is not in WAL mode"

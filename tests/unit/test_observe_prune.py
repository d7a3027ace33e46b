"""The daemon prunes records nobody collected, but never the spool of a sandbox whose
trace connection is still open, however long its build runs (a private daemon; the
clock is moved by setting the spool files' mtimes into the past)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.observe.daemon import ObserverDaemon, ObserverPaths
from farm.observe.spool import STALE_SECONDS, read_observation

from .test_observe_sink import open_event, peer


@pytest.fixture
def paths() -> Iterator[ObserverPaths]:
    with tempfile.TemporaryDirectory(prefix="farm-prune-") as d:
        yield ObserverPaths(socket=Path(d) / "observer.sock", spool=Path(d) / "spool")


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def wait_for(spool: Path, pattern: str) -> Path:
    deadline = time.monotonic() + 10
    while not (found := list(spool.glob(pattern))) and time.monotonic() < deadline:
        time.sleep(0.02)
    [path] = found
    return path


def test_an_open_connections_spool_survives_pruning(paths: ObserverPaths) -> None:
    daemon = ObserverDaemon(paths)
    with daemon, peer(paths.socket) as live:
        assert live.recv(100) == b"\x08\x01"
        live.send(open_event("/early", container="long-build"))
        part = wait_for(paths.spool, "long-build.*.part")
        # A dead daemon's leftover, as old as the live build's spool: this one goes.
        stale = paths.spool / "conn-99.part"
        stale.write_bytes(b"")
        for path in (part, stale):
            age(path, STALE_SECONDS + 3600)
        pruned = daemon._writer.prune()  # what the daemon runs every 10 minutes
        assert pruned == ["conn-99.part"]
        assert part.exists()
        # Also with the clock moved forward rather than the file back.
        assert daemon._writer.prune(now=time.time() + 2 * STALE_SECONDS) == []
        live.send(open_event("/late", container="long-build"))
        live.close()
        seen = read_observation(paths.spool, "long-build", timeout=5).whole()
    assert seen.complete and [e.fields["pathname"] for e in seen.events] == ["/early", "/late"]


def test_a_finished_record_nobody_collected_is_still_pruned(paths: ObserverPaths) -> None:
    daemon = ObserverDaemon(paths)
    with daemon:
        with peer(paths.socket) as s:
            s.recv(100)
            s.send(open_event("/x", container="orphan"))
        trace = wait_for(paths.spool, "orphan.*.trace")
        meta = trace.with_suffix(".meta")
        assert daemon._writer.prune() == []  # fresh
        for path in (trace, meta):
            age(path, STALE_SECONDS + 1)
        assert sorted(daemon._writer.prune()) == sorted([trace.name, meta.name])


def test_a_cut_record_is_incomplete_at_once_and_pruned_like_any_other(
    paths: ObserverPaths,
) -> None:
    """Stopping the daemon cuts an open connection: the record is reported incomplete
    without waiting for a hang-up that will never come, and is pruned once stale."""
    daemon = ObserverDaemon(paths).start()
    with peer(paths.socket) as s:
        s.recv(100)
        s.send(open_event("/x", container="cut"))
        part = wait_for(paths.spool, "cut.*.part")
        daemon.close()
    assert part.exists() and part.with_suffix(".cut").exists()
    started = time.monotonic()
    seen = read_observation(paths.spool, "cut", timeout=30, consume=False).whole()
    assert time.monotonic() - started < 5
    assert not seen.complete and "observer was stopped" in seen.problem
    assert [e.fields["pathname"] for e in seen.events] == ["/x"]
    for path in (part, part.with_suffix(".cut")):
        age(path, STALE_SECONDS + 1)
    with ObserverDaemon(paths):  # a restart prunes at start
        assert list(paths.spool.glob("cut.*")) == []

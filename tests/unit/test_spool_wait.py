"""The end of an observed build waits for the observer daemon's record by an inotify
watch on the spool, not by a fixed sleep (issue 14: start plus teardown). The polling
interval is set to an hour here, so a reader that returns at all was woken by the
daemon's write: a private daemon, a real trace connection, real files."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.observe import spool
from farm.observe.daemon import ObserverDaemon, ObserverPaths
from farm.observe.dirwatch import DirWatch
from farm.observe.spool import SpooledRecord, read_observation

from .test_observe_prune import wait_for
from .test_observe_sink import open_event, peer

HOUR = 3600.0


@pytest.fixture
def paths() -> Iterator[ObserverPaths]:
    with tempfile.TemporaryDirectory(prefix="farm-spool-wait-") as d:
        yield ObserverPaths(socket=Path(d) / "observer.sock", spool=Path(d) / "spool")


def test_a_rename_into_the_directory_wakes_the_watch(tmp_path: Path) -> None:
    part = tmp_path / "c.1.part"
    part.write_bytes(b"")
    with DirWatch(tmp_path, interval=HOUR) as watch:
        assert watch.watching
        part.rename(tmp_path / "c.1.trace")  # the daemon's "complete" signal
        assert watch.wait(HOUR) is True


def test_a_new_marker_file_wakes_the_watch(tmp_path: Path) -> None:
    with DirWatch(tmp_path, interval=HOUR) as watch:
        (tmp_path / "c.1.cut").write_text("{}")  # the daemon cut the connection
        assert watch.wait(HOUR) is True


def test_nothing_changing_is_a_timeout_not_a_wake(tmp_path: Path) -> None:
    with DirWatch(tmp_path) as watch:
        assert watch.wait(0) is False


def test_without_the_directory_it_polls(tmp_path: Path) -> None:
    with DirWatch(tmp_path / "missing") as watch:
        assert not watch.watching
        assert watch.wait(0) is False


def test_the_reader_wakes_when_the_daemon_finishes_the_record(
    paths: ObserverPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[SpooledRecord] = []
    looked = threading.Event()
    real = spool.finished_record

    looks: list[None] = []

    def look(*args: object, **kw: bool) -> SpooledRecord | None:
        found = real(*args, **kw)  # type: ignore[arg-type]
        looks.append(None)
        if len(looks) == 2:  # the look after the watch was set up found nothing: it waits
            looked.set()
        return found

    monkeypatch.setattr(spool, "finished_record", look)
    with ObserverDaemon(paths), peer(paths.socket) as live:
        assert live.recv(100) == b"\x08\x01"
        live.send(open_event("/seen", container="waited"))
        wait_for(paths.spool, "waited.*.part")
        reader = threading.Thread(
            target=lambda: got.append(
                read_observation(paths.spool, "waited", timeout=HOUR, interval=HOUR)
            ),
            daemon=True,
        )
        reader.start()
        looked.wait()
        live.close()  # runsc hangs up when its sandbox is gone
        reader.join(HOUR / 60)  # only a hang guard: a polling reader sleeps an hour
        assert got, "the reader slept through the daemon's write"
    seen = got[0].whole()
    assert seen.complete and [e.fields["pathname"] for e in seen.events] == ["/seen"]


def test_a_watch_on_a_descriptor_past_1024_still_waits(tmp_path: Path) -> None:
    """select() refuses descriptors >= FD_SETSIZE (ValueError); a busy ``farm serve``
    holds that many. Below 1100 open files, the watch's own descriptor lands past it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard file limit ({hard}) is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with DirWatch(tmp_path) as watch:
            assert watch.watching and watch._fd is not None and watch._fd >= 1024
            assert watch.wait(0.05) is False
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class RacyDir(type(Path())):  # type: ignore[misc]
    """A spool directory where the daemon finishes ``c.1.part`` during the first glob."""

    def glob(self, pattern: str):  # type: ignore[no-untyped-def, override]
        found = list(super().glob(pattern))
        if (self / "c.1.part").exists():
            (self / "c.1.part").rename(self / "c.1.trace")
        return iter(found)


def test_a_segment_finished_between_the_globs_is_not_lost(tmp_path: Path) -> None:
    (tmp_path / "c.1-1.trace").write_bytes(b"")  # a late segment, complete
    (tmp_path / "c.1.part").write_bytes(b"")  # the first one, being renamed
    got = spool.finished_record(RacyDir(tmp_path), "c", consume=False)
    assert got is None or sorted(p.name for p in got._traces) == ["c.1-1.trace", "c.1.trace"]

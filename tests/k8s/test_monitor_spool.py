"""The node monitor's process keeps its spool clean while it runs: the observer daemon
it serves prunes records nobody collected, on its own clock, without a restart, and
never the spool of a sandbox whose trace connection is still open (a private daemon on
private paths; the clock is moved by setting the files' mtimes into the past)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from farm.k8s.nodemonitor import serve
from farm.metrics import Metrics
from farm.observe.daemon import ObserverPaths
from farm.observe.spool import STALE_SECONDS
from tests.k8s.conftest import Cluster
from tests.k8s.kubelet import wait_for
from tests.unit.test_observe_prune import age
from tests.unit.test_observe_sink import open_event, peer


@pytest.fixture
def paths() -> Iterator[ObserverPaths]:
    # Short: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="farm-mon-") as d:
        yield ObserverPaths(socket=Path(d) / "observer.sock", spool=Path(d) / "spool")


def test_the_running_monitor_prunes_finished_records_but_never_an_open_one(
    cluster: Cluster, paths: ObserverPaths
) -> None:
    stop = threading.Event()
    metrics = Metrics(CollectorRegistry())
    monitor = threading.Thread(
        target=serve,
        args=(cluster.kube, metrics, paths, "node-1", stop),
        kwargs={"interval": 0.05, "prune_every": 0.05},
        daemon=True,
    )
    monitor.start()
    try:
        wait_for(paths.socket.exists, "the observer's socket")
        with peer(paths.socket) as live:
            assert live.recv(100) == b"\x08\x01"
            live.send(open_event("/early", container="long-build"))
            part = wait_for(lambda: list(paths.spool.glob("long-build.*.part")), "its spool")[0]
            # Finished long ago and never collected (its pod is gone); and the open
            # connection's file, as old (a quiet build writes through a 1 MiB buffer).
            finished = [paths.spool / "gone.7.trace", paths.spool / "gone.7.meta"]
            for path in finished:
                path.write_bytes(b"")
            for path in (*finished, part):
                age(path, STALE_SECONDS + 3600)
            wait_for(lambda: not any(p.exists() for p in finished), "the periodic prune")
            assert part.exists() and monitor.is_alive()  # pruned while serving, no restart
    finally:
        stop.set()
        monitor.join(30)
    assert not monitor.is_alive()

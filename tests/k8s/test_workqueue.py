"""The work queue's guarantees: one entry per key, never two workers on one key, and
no change lost while a key is being worked on."""

from __future__ import annotations

from farm.k8s.workqueue import WorkQueue


def test_a_key_added_many_times_is_queued_once() -> None:
    q = WorkQueue()
    for key in ("ns/a", "ns/b", "ns/a", "ns/a"):
        q.add(key)
    assert len(q) == 2
    assert [q.get(0), q.get(0), q.get(0)] == ["ns/a", "ns/b", None]


def test_a_key_changed_while_in_hand_is_handed_out_again_only_after_done() -> None:
    q = WorkQueue()
    q.add("ns/a")
    assert q.get(0) == "ns/a"
    q.add("ns/a")  # changed while a worker holds it
    assert q.get(0) is None  # not handed to a second worker
    q.done("ns/a")
    assert q.get(0) == "ns/a"


def test_a_delayed_retry_arrives_and_shutdown_releases_waiters() -> None:
    q = WorkQueue()
    q.add_after("ns/a", 0.01)
    assert q.get(5) == "ns/a"
    q.shutdown()
    assert q.get() is None

"""What one submission may cost `farm serve` before it is queued.

Reading submitted trees is bounded: at most ``READ_SLOTS`` submissions read their
source (git history, Cargo.toml) at once, whatever the number of HTTP threads, and at
most ``TENANT_READ_SLOTS`` of one tenant's; one more waits ``READ_WAIT_SECONDS`` and then
answers 503 with Retry-After, queueing nothing.

The real Api, Service, Queue and Store behind a real listening socket; the slots are
taken by the test itself, which stands in for slow hostile trees deterministically."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from farm import service as service_module
from farm.api import Api, make_server
from farm.httpserver import HttpLimits
from farm.service import Service
from tests.unit.apihost import offline_service


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Service, int, Path]]:
    home, root = tmp_path / "home", tmp_path / "src"
    (root / "proj").mkdir(parents=True)
    service = offline_service(home, root, per_tenant=False)
    api = Api(service, service.store, home / "work", None)
    server = make_server(api, "127.0.0.1", 0, HttpLimits())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service, server.server_address[1], root / "proj"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def submit(port: int, source: Path, **extra: object) -> tuple[int, dict[str, str], bytes]:
    data = {"source": str(source), "argv": ["true"], "outputs": ["out/x"], **extra}
    body = json.dumps(data)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/builds", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_a_submission_beyond_the_read_slots_is_503_and_queues_nothing(
    served: tuple[Service, int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, port, source = served
    monkeypatch.setattr(service_module, "READ_WAIT_SECONDS", 0.2)
    with ExitStack() as held:
        for index in range(service_module.READ_SLOTS):
            held.enter_context(service._reading.hold(f"slow-{index}", 0))
        status, headers, body = submit(port, source)
        assert status == 503, body
        assert headers.get("Retry-After") == "5"
        assert "busy reading other submissions" in json.loads(body)["error"]
        assert service.queue.entries(limit=10) == []
    status, _, body = submit(port, source)
    assert status == 202, body
    assert len(service.queue.entries(limit=10)) == 1


def test_one_tenant_cannot_take_every_read_slot(
    served: tuple[Service, int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant whose crafted tree is still being read gets 503 for its next submission,
    while another tenant's is read and queued: one tenant cannot starve the rest."""
    service, port, source = served
    # Its next one is refused at once, not after a wait: a waiting submission holds one
    # of the server's HTTP threads, so one tenant's waiters could fill them all.
    monkeypatch.setattr(service_module, "READ_WAIT_SECONDS", 3600)
    with service._reading.hold("mallory", 0):  # mallory's first, slow tree
        status, headers, body = submit(port, source, tenant="mallory")
        assert status == 503, body
        assert headers.get("Retry-After") == "5"
        assert "earlier submission(s) of tenant 'mallory'" in json.loads(body)["error"]
        status, _, body = submit(port, source, tenant="alice")
        assert status == 202, body
    assert [entry.tenant for entry in service.queue.entries(limit=10)] == ["alice"]
    status, _, body = submit(port, source, tenant="mallory")
    assert status == 202, body


def test_check_runs_above_the_ceiling_are_400_and_queue_nothing(
    served: tuple[Service, int, Path],
) -> None:
    """Each run of a check is a whole build: the default ceiling is 3 runs."""
    service, port, source = served
    status, _, body = submit(port, source, check=4)
    assert status == 400, body
    assert json.loads(body)["problems"] == [
        "check: 4 runs is above this installation's ceiling of 3; ask for at most 3"
    ]
    assert service.queue.entries(limit=10) == []
    status, _, body = submit(port, source, check=3)
    assert status == 202, body

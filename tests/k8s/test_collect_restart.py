"""A Build whose controller crashes mid-collect still succeeds: the fake API over real
HTTP, the real controllers and artifact servers, and farm's real collector. The
successor runs over the same store directory (the controller's volume), as a restarted
or rescheduled controller pod does."""

from __future__ import annotations

import base64
import hashlib
import http.client
from pathlib import Path
from urllib.parse import urlsplit

from tests.k8s.conftest import NS, RUN_NS, Cluster
from tests.k8s.kubelet import (
    build_manifest,
    build_pod,
    finish_job,
    job,
    run_collector,
    sandbox_tree,
)


def put(url: str, key: str, token: str, body: bytes) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("PUT", f"/v1/builds/{key}/blobs", body, {"Authorization": f"Bearer {token}"})
    status = conn.getresponse().status
    conn.close()
    return status


def collector_env(cluster: Cluster, build: dict) -> tuple[str, str]:
    """The upload key and token the build pod's collector was given."""
    pod = job(cluster.api, RUN_NS, build, "build")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    [secret] = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    token = base64.b64decode(cluster.api.get("secrets", RUN_NS, secret)["data"]["token"])
    return env["FARM_BUILD"], token.decode()


def test_a_controller_crash_mid_collect_still_ends_succeeded(
    cluster: Cluster, tmp_path: Path
) -> None:
    first = cluster.controller("first")
    cluster.monitor()
    build = cluster.api.create("builds", NS, build_manifest("restarted"))
    finish_job(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "fetch"))
    build_pod(cluster.api, RUN_NS, job(cluster.api, RUN_NS, build, "build"), exit_code=0)
    cluster.wait_phase("restarted", "Collecting")
    key, token = collector_env(cluster, build)
    assert put(cluster.artifact_url(first), key, token, b"built") == 200  # the collect begins

    cluster.stop(first, crash=True)  # mid-collect; its Lease is still held for a while
    second = cluster.controller("second", home="first")  # the same volume
    # The collector meets the successor before it leads or has reconciled the Build:
    # it is told to wait (503), then its session, token and blob are all there.
    root = sandbox_tree(tmp_path / "pod", {"app": b"built", "lib.so": b"library"})
    url = cluster.artifact_url(second)
    assert run_collector(cluster.api, RUN_NS, build, root, rerouted=url) == 0

    status = cluster.wait_phase("restarted", "Succeeded")["status"]
    assert {a["path"]: a["sha256"] for a in status["artifacts"]} == {
        "out/app": hashlib.sha256(b"built").hexdigest(),
        "out/lib.so": hashlib.sha256(b"library").hexdigest(),
    }
    store = second.reconciler.store
    for art in status["artifacts"]:
        assert (
            hashlib.sha256(store.blob_path(art["sha256"]).read_bytes()).hexdigest()
            == (art["sha256"])
        )
    # The first run's token after the restart, for another key: refused.
    other = key.rsplit("/", 1)[0] + "/another-uid"
    assert put(url, other, token, b"x") == 401

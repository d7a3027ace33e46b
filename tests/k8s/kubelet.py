"""The cluster's side in the k8s tests: what the Job controller and kubelet would do.

Each helper changes objects through :meth:`FakeAPI.mutate`/``create`` (so watches see
it), and :func:`run_collector` runs farm's real collector against real files and the
controller's real artifact endpoint.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from farm.k8s import collector, names
from farm.observe.spool import Observation
from tests.k8s.fakeapi import FakeAPI

T = TypeVar("T")
REVISION = "0123456789abcdef0123456789abcdef01234567"
#: The runtime id :func:`build_pod` gives the ``build`` container (runsc's sandbox id).
BUILD_CID = "ab" * 32


def run_cid(run: int) -> str:
    """The ``build`` container's runtime id in run ``run`` of a check (run 0: BUILD_CID)."""
    return BUILD_CID if run == 0 else f"{run:02x}" * 32


def wait_for(probe: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """Poll ``probe`` until truthy. The timeout only bounds a hang; it asserts no speed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def build_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name},
        "spec": {
            "source": {"git": "https://git.example.test/app.git", "revision": REVISION},
            "argv": ["cargo", "build", "--release", "--offline"],
            "outputs": ["out/**"],
            **spec,
        },
    }


def owned(api: FakeAPI, ns: str, build: dict, plural: str) -> list[dict]:
    return api.list(plural, ns, f"{names.BUILD_LABEL}={build['metadata']['uid']}")


def job(api: FakeAPI, ns: str, build: dict, role: str) -> dict:
    name = names.object_name(build["metadata"]["name"], build["metadata"]["uid"], role)
    return wait_for(lambda: _maybe(api, "jobs", ns, name), f"Job {name}")


def _maybe(api: FakeAPI, plural: str, ns: str, name: str) -> dict | None:
    found = [o for o in api.list(plural, ns) if o["metadata"]["name"] == name]
    return found[0] if found else None


def finish_job(api: FakeAPI, ns: str, job: dict, ok: bool = True, reason: str = "") -> None:
    kind = "Complete" if ok else "Failed"

    def change(obj: dict) -> None:
        obj["status"] = {
            "conditions": [{"type": kind, "status": "True", "reason": reason or kind}],
            "succeeded" if ok else "failed": 1,
        }

    api.mutate("jobs", ns, job["metadata"]["name"], change)


def build_pod(api: FakeAPI, ns: str, job: dict, exit_code: int | None, log: bytes = b"") -> dict:
    """The Job's pod, with the ``build`` init container terminated (or running), as the
    Job controller makes it: labelled with the Job's uid and controlled by the Job."""
    template = job["spec"]["template"]
    run = int(template["metadata"]["labels"].get(names.RUN_LABEL, "0"))
    name = f"{job['metadata']['name']}-x7k2p"
    state = {"terminated": {"exitCode": exit_code}} if exit_code is not None else {"running": {}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                **template["metadata"]["labels"],
                "job-name": job["metadata"]["name"],
                names.JOB_UID_LABEL: job["metadata"]["uid"],
            },
            "annotations": dict(template["metadata"]["annotations"]),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job["metadata"]["name"],
                    "uid": job["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {**template["spec"], "nodeName": "node-1"},
        "status": {
            "phase": "Running",
            "initContainerStatuses": [
                _status(
                    "build", run_cid(run)[:2], state, template["spec"]["initContainers"][0]["image"]
                )
            ],
            "containerStatuses": [
                _status(
                    "collector", "cd", {"waiting": {}}, template["spec"]["containers"][0]["image"]
                )
            ],
        },
    }
    api.pod_logs[(ns, name, "build")] = log
    existing = _maybe(api, "pods", ns, name)
    if existing:
        return api.mutate("pods", ns, name, lambda o: o.update(status=pod["status"]))
    return api.create("pods", ns, pod)


class Spooled:
    """Stands in for farm.observe's HostObserver on a node: one recorded Observation
    per container; a container with no record is incomplete, as the real one says."""

    def __init__(self, observations: dict[str, Observation]) -> None:
        self.observations = observations
        self.asked: list[str] = []

    def poll(self, container_id: str) -> Observation:
        return self.collect(container_id)  # every record here is final

    def collect(self, container_id: str, timeout: float | None = None) -> Observation:
        self.asked.append(container_id)
        missing = Observation(
            container_id=container_id,
            complete=False,
            problem="the observer received no trace connection for this sandbox",
        )
        return self.observations.get(container_id, missing)


def _status(name: str, fill: str, state: dict, image: str) -> dict:
    return {
        "name": name,
        "containerID": f"containerd://{fill * 32}",
        "image": image,
        "imageID": f"sha256:{fill * 32}",
        "ready": False,
        "restartCount": 0,
        "state": state,
    }


def run_collector(
    api: FakeAPI,
    ns: str,
    build: dict,
    root: Path,
    run: int = 0,
    rerouted: str | None = None,
    token: bytes | None = None,
    deadline: float | None = None,
) -> int:
    """Run farm's collector as run ``run``'s collector container would, against
        ``root``: with the upload URL, key and token Secret its Job gives it. The URL must
        be an IP literal (the collect policy allows no DNS). ``rerouted`` replaces its
        address after a failover: a real Service keeps its ClusterIP and routes to the new
        leader, while each test controller has its own port. ``token`` replaces the one in
        the Job's Secret (an attacker's guess or plant); ``deadline`` the Job's collect
    deadline (a refused token is retried until it passes)."""
    pod = job(api, ns, build, names.run_role("build", run))["spec"]["template"]["spec"]
    given = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    [secret_name] = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    secret = api.get("secrets", ns, secret_name)
    token_file = root / "token"
    token_file.write_bytes(token or base64.b64decode(secret["data"]["token"]))
    host = urlsplit(given["FARM_ARTIFACT_URL"]).hostname or ""
    ipaddress.ip_address(host)  # ValueError for a name
    env = {
        "FARM_ARTIFACT_URL": rerouted or given["FARM_ARTIFACT_URL"],
        "FARM_BUILD": given["FARM_BUILD"],
        "FARM_TOKEN_FILE": str(token_file),
        "FARM_OUTPUTS": given["FARM_OUTPUTS"],
        "FARM_COLLECT_DEADLINE": str(deadline or given.get("FARM_COLLECT_DEADLINE") or 60),
    }
    return collector.run(env, root=root)


def sandbox_tree(root: Path, files: dict[str, bytes]) -> Path:
    """A pod's /src, /build/target and /out under ``root``, with ``files`` in /out."""
    for sub in ("src", "build/target", "out"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / "out" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def symlink(root: Path, rel: str, target: str) -> None:
    os.symlink(target, root / "out" / rel)

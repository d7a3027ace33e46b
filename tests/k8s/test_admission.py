"""The controller refuses a Build above the operator's ceilings or with an image outside
its allowlist (farm.admission): a Failed condition with its own reason, a warning
Event, and not one object created for it. Against the fake API over real HTTP."""

from __future__ import annotations

import pytest

from farm.admission import Ceilings, ImageAllowlist
from farm.k8s.config import ControllerConfig
from tests.k8s.conftest import NS, RUN_NS, Cluster
from tests.k8s.kubelet import build_manifest, job, wait_for

DIGEST = "sha256:" + "ab" * 32


def refused_with(cluster: Cluster, name: str, reason: str) -> dict:
    """The Build's Failed status; asserts its reason, its Event and that nothing was made."""
    failed = cluster.wait_phase(name, "Failed")
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Succeeded")
    assert (condition["status"], condition["reason"]) == ("False", reason)
    uid = failed["metadata"]["uid"]

    def warned() -> bool:
        events = [e for e in cluster.api.list("events", NS) if e["involvedObject"]["uid"] == uid]
        return any(e["reason"] == reason and e["type"] == "Warning" for e in events)

    wait_for(warned, f"a {reason} warning Event")  # written just after the status
    wait_for(lambda: cluster.api.get("builds", NS, name)["status"].get("tornDown"), "teardown")
    # Never created, not merely cleaned up: no Job, PVC, NetworkPolicy, Secret or account.
    made = [
        (p, n)
        for p, ns, n in cluster.api.created
        if ns in (NS, RUN_NS) and p not in ("builds", "events")
    ]
    assert made == [], made
    return failed


#: Exactly the spec's defaults: a default Build sits at every ceiling.
CEILINGS = Ceilings(
    cpus=2,
    memory="4g",
    pids=512,
    scratch="1g",
    disk="10g",
    timeout_seconds=1800,
    max_file="512m",
    max_total="2g",
    max_files=10_000,
    log="4m",
    check_runs=0,
)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"resources": {"cpus": 4}}, "resources.cpus: 4.0"),
        ({"resources": {"memory": "5g"}}, "resources.memory: 5g"),
        ({"resources": {"pids": 513}}, "resources.pids: 513"),
        ({"resources": {"scratch": "1025m"}}, "resources.scratch: 1025m"),
        ({"timeout_seconds": 1801}, "timeout_seconds: 1801"),
        ({"limits": {"max_file": "513m"}}, "limits.max_file: 513m"),
        ({"limits": {"max_total": "3g"}}, "limits.max_total: 3g"),
        ({"limits": {"max_files": 10_001}}, "limits.max_files: 10001"),
        ({"limits": {"log": "5m"}}, "limits.log: 5m"),
        ({"resources": {"disk": "11g"}}, "resources.disk: 11g"),
        ({"check": 2}, "check: 2 runs"),
    ],
)
def test_a_build_above_a_ceiling_fails_and_creates_nothing(
    cluster: Cluster, spec: dict, field: str
) -> None:
    cluster.controller("a", ControllerConfig(ceilings=CEILINGS))
    cluster.api.create("builds", NS, build_manifest("big", **spec))
    failed = refused_with(cluster, "big", "ExceedsLimits")
    message = failed["status"]["message"]
    assert message.startswith(f"{field} is above this installation's ceiling of "), message
    assert "controller.config" in message


def test_a_build_at_its_ceilings_runs(cluster: Cluster) -> None:
    cluster.controller("a", ControllerConfig(ceilings=CEILINGS))
    build = cluster.api.create("builds", NS, build_manifest("fits"))
    assert job(cluster.api, RUN_NS, build, "fetch")
    cluster.wait_phase("fits", "Fetching")


@pytest.mark.parametrize(
    "image",
    [
        "farm/fetch:bookworm",  # farm's own, but not a builder
        "debian:bookworm",
        "localhost/farm/rust:bookworm",
        f"farm/rust:bookworm@{DIGEST}",  # the digest decides what runs, not the tag
        "registry.test/farm/rust:bookworm",
        "sha256:" + "cd" * 32,
        "0123abcd",
    ],
)
def test_a_build_with_an_image_outside_the_allowlist_fails_and_creates_nothing(
    cluster: Cluster, image: str
) -> None:
    cluster.controller("a")  # the default allowlist: farm/rust:bookworm
    cluster.api.create("builds", NS, build_manifest("img", image=image))
    failed = refused_with(cluster, "img", "ImageNotAllowed")
    assert "allowed: farm/rust:bookworm" in failed["status"]["message"]


def test_a_pinned_digest_admits_that_digest_only(cluster: Cluster) -> None:
    pinned = ControllerConfig(allowed_images=ImageAllowlist([f"farm/rust@{DIGEST}"]))
    cluster.controller("a", pinned)
    cluster.api.create("builds", NS, build_manifest("tag", image="farm/rust:bookworm"))
    refused_with(cluster, "tag", "ImageNotAllowed")
    build = cluster.api.create(
        "builds", NS, build_manifest("pin", image=f"docker.io/farm/rust:x@{DIGEST}")
    )
    assert job(cluster.api, RUN_NS, build, "fetch")


def test_every_problem_is_named_and_ceilings_decide_the_reason(cluster: Cluster) -> None:
    cluster.controller("a", ControllerConfig(ceilings=CEILINGS))
    both = build_manifest("both", image="debian", resources={"memory": "5g"})
    cluster.api.create("builds", NS, both)
    message = refused_with(cluster, "both", "ExceedsLimits")["status"]["message"]
    assert "resources.memory: 5g" in message and "image: 'debian'" in message


def test_the_config_file_takes_ceilings_and_images() -> None:
    config = ControllerConfig.model_validate(
        {"ceilings": {"memory": "8g", "log": "1m"}, "allowed_images": ["farm/rust:*"]}
    )
    assert config.ceilings.memory == 8 << 30 and config.ceilings.cpus == Ceilings().cpus
    assert config.allowed_images.root == ["farm/rust:*"]
    with pytest.raises(ValueError, match="memroy"):
        ControllerConfig.model_validate({"ceilings": {"memroy": "8g"}})
    with pytest.raises(ValueError, match="allowed image pattern"):
        ControllerConfig.model_validate({"allowed_images": ["Farm/rust"]})

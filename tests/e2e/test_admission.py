"""Operator ceilings and the image allowlist on the real paths: `farm serve` over real
HTTP (400 naming each field, nothing queued, as the host's queue shows) and a local
`farm build` against real dockerd (exit 2, no container created). The matching rule
itself is pinned in tests/unit/test_admission.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from farm.queue import Queue
from farm.settings import DEFAULT_IMAGE
from farm.store import Store

from .conftest import created, farm, farm_containers
from .test_serve import Served, project, serve  # noqa: F401  (fixtures)

TINY = ["sh", "-c", "echo x > /out/x"]
#: (spec path, value at the ceiling, value above it) for every ceiling a spec has today.
CEILINGS = {
    "cpus": (("resources", "cpus"), 1.0, 1.5),
    "memory": (("resources", "memory"), "512m", "513m"),
    "pids": (("resources", "pids"), 256, 257),
    "scratch": (("resources", "scratch"), "64m", "65m"),
    "disk": (("resources", "disk"), "128m", "129m"),
    "timeout_seconds": (("timeout_seconds",), 120, 121),
    "max_file": (("limits", "max_file"), "1m", "1025k"),
    "max_total": (("limits", "max_total"), "2m", "2049k"),
    "max_files": (("limits", "max_files"), 5, 6),
    "log": (("limits", "log"), "64k", "65k"),
}
DIGEST = "sha256:" + "ab" * 32


def with_value(spec: dict, path: tuple[str, ...], value: object) -> dict:
    if len(path) == 1:
        return {**spec, path[0]: value}
    return {**spec, path[0]: {**spec.get(path[0], {}), path[1]: value}}


def at_ceilings(source: Path) -> dict:
    spec: dict = {"source": str(source), "argv": TINY, "outputs": ["out/x"]}
    for path, at, _ in CEILINGS.values():
        spec = with_value(spec, path, at)
    return spec


def refused(served: Served, spec: dict) -> list[str]:
    status, raw = served.call("POST", "/v1/builds", spec)
    assert status == 400, raw
    return json.loads(raw)["problems"]


def test_serve_refuses_every_field_above_its_ceiling_and_queues_nothing(
    serve,  # noqa: F811
    project: Path,  # noqa: F811
    tmp_path: Path,
    home: Path,
) -> None:
    ceilings = [f"--ceiling={name}={at}" for name, (_, at, _) in CEILINGS.items()]
    served = serve("--concurrency", "1", "--source-root", str(tmp_path / "src"), *ceilings)
    base = at_ceilings(project)
    for path, at, above in CEILINGS.values():
        problems = refused(served, with_value(base, path, above))
        field = ".".join(path)
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"{field}: {above} is above this installation's ceiling")
        assert problems[0].endswith(f"ask for at most {at}"), problems
    everything = base
    for path, _, above in CEILINGS.values():
        everything = with_value(everything, path, above)
    assert len(refused(served, everything)) == len(CEILINGS)
    # Nothing above a ceiling reached the queue.
    assert Queue(home / "index.sqlite").entries() == []

    # Exactly at every ceiling: accepted, and it builds.
    status, raw = served.call("POST", "/v1/builds", base)
    assert status == 202, raw
    build_id = json.loads(raw)["id"]
    assert served.wait_done(build_id)["result"] == "succeeded"
    assert [e.id for e in Queue(home / "index.sqlite").entries()] == [build_id]


def test_serve_refuses_images_outside_its_allowlist_in_any_spelling(
    serve,  # noqa: F811
    project: Path,  # noqa: F811
    tmp_path: Path,
    home: Path,
    client: docker.DockerClient,
) -> None:
    image_id = client.images.get(DEFAULT_IMAGE).id  # sha256:…: dockerd would run it by id
    pin = f"farm/rust@{DIGEST}"
    served = serve("--source-root", str(tmp_path / "src"), "--allow-image", pin)
    spec = {"source": str(project), "argv": TINY, "outputs": ["out/x"]}
    for image in [
        DEFAULT_IMAGE,  # allowed by default, but this service pins one digest
        f"{DEFAULT_IMAGE}@sha256:{'cd' * 32}",
        f"farm/rust@sha256:{'cd' * 32}",
        f"docker.io/farm/rust:bookworm@sha256:{'cd' * 32}",
        "localhost/farm/rust:bookworm",
        image_id,
        image_id.removeprefix("sha256:"),
        image_id.removeprefix("sha256:")[:12],
        "farm/rust:bookworm ",
        "Farm/Rust:bookworm",
    ]:
        problems = refused(served, {**spec, "image": image})
        assert any(p.startswith("image: ") for p in problems), (image, problems)
    assert Queue(home / "index.sqlite").entries() == []
    # The pinned digest is admitted whatever tag is written beside it; it is not in
    # dockerd (imported images have no repo digest), so the build then fails there,
    # having created nothing.
    for image in (pin, f"docker.io/farm/rust:whatever@{DIGEST}"):
        status, raw = served.call("POST", "/v1/builds", {**spec, "image": image})
        assert status == 202, raw
        done = served.wait_done(json.loads(raw)["id"])
        assert done["result"] == "failed" and "is not in dockerd" in done["error"], done


@pytest.fixture
def other_image(client: docker.DockerClient) -> Iterator[str]:
    """farm's builder under a name no allowlist has: an image present on the host that a
    tenant could name. Untagged again afterwards (the image itself stays)."""
    name = "farm-test-admission/other:1"
    client.images.get(DEFAULT_IMAGE).tag(name)
    try:
        yield name
    finally:
        client.images.remove(name, noprune=True)


def test_local_build_refuses_a_host_image_outside_the_allowlist(
    home: Path,
    project: Path,  # noqa: F811
    client: docker.DockerClient,
    other_image: str,
) -> None:
    since = time.time()
    image_id = client.images.get(other_image).id
    for image in (
        other_image,
        f"docker.io/{other_image}",
        image_id,  # dockerd runs an image by id or id prefix: never admitted
        image_id.removeprefix("sha256:")[:12],
        f"{DEFAULT_IMAGE}@{image_id}",  # the allowed tag, but the digest decides
        f"localhost/{DEFAULT_IMAGE}",
    ):
        done = farm(home, "build", str(project), "--image", image, "--", "true")
        assert done.returncode == 2, (image, done.stderr)
        assert "allowed: farm/rust:bookworm" in done.stderr, done.stderr
        assert "FARM_ALLOWED_IMAGES" in done.stderr
    assert created(client, home, since) == [] and farm_containers(client, home) == []
    assert Store(home).list() == []

    # The operator's variable admits it.
    done = farm(
        home,
        "build",
        str(project),
        "--image",
        other_image,
        "--output",
        "out/x",
        "--",
        *TINY,
        FARM_ALLOWED_IMAGES=f"{DEFAULT_IMAGE},farm-test-admission/*:*",
    )
    assert done.returncode == 0, done.stderr


def test_local_build_with_a_pinned_digest_refuses_the_tag(
    home: Path,
    project: Path,  # noqa: F811
    client: docker.DockerClient,
) -> None:
    since = time.time()
    pinned = {"FARM_ALLOWED_IMAGES": f"farm/rust@{DIGEST}"}
    done = farm(home, "build", str(project), "--image", DEFAULT_IMAGE, "--", "true", **pinned)
    assert done.returncode == 2 and f"allowed: farm/rust@{DIGEST}" in done.stderr, done.stderr
    # The pin itself passes admission and only then meets dockerd, which lacks it.
    done = farm(
        home, "build", str(project), "--image", f"farm/rust@{DIGEST}", "--", "true", **pinned
    )
    assert done.returncode == 2 and "is not in dockerd" in done.stderr, done.stderr
    assert created(client, home, since) == []

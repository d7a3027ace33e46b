"""containers/: the controller and node-monitor Dockerfiles build (from farm's wheels,
with no PyPI access inside the build) and the images run farm as their non-root user
with a read-only root. The registry base cannot be pulled here, so BASE is swapped for
the offline Debian bookworm image `make setup` builds (the same suite)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from farm.settings import DEFAULT_IMAGE, MANAGED_LABEL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context holding only dist/wheels, as `make wheels` makes it."""
    ctx = tmp_path_factory.mktemp("image-context")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(ctx / "dist" / "wheels"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return ctx


@pytest.fixture(scope="module")
def built(client: docker.DockerClient) -> Iterator[list[str]]:
    """The built images' ids; after the module they and the untagged intermediate images
    the builds left (their shared stages, labelled by the base) are removed by id. One
    cleanup per module, so the second image reuses the first one's cached stages."""
    before = {i.id for i in client.images.list(all=True)}
    ids: list[str] = []
    yield ids
    for image_id in ids:
        client.images.remove(image_id, force=True)
    leftovers = [
        i
        for i in client.images.list(all=True, filters={"dangling": True})
        if i.id not in before and (i.labels or {}).get(MANAGED_LABEL) == "true"
    ]
    for image in sorted(leftovers, key=lambda i: i.attrs["Created"], reverse=True):
        client.images.remove(image.id, force=True)


@pytest.mark.parametrize(("name", "uid"), [("controller", "10002"), ("node-monitor", "10003")])
def test_image_builds_and_runs_farm_as_non_root(
    name: str, uid: str, context: Path, client: docker.DockerClient, built: list[str]
) -> None:
    dockerfile = context / f"{name}.Dockerfile"
    shutil.copy(ROOT / "containers" / name / "Dockerfile", dockerfile)
    done = subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--force-rm",  # a failed step leaves no container behind
            "-f",
            str(dockerfile),
            "--build-arg",
            f"BASE={DEFAULT_IMAGE}",
            "--label",
            f"{MANAGED_LABEL}=true",
            str(context),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    image_id = done.stdout.strip().splitlines()[-1]
    built.append(image_id)
    image = client.images.get(image_id)
    assert image.attrs["Config"]["User"] == f"{uid}:{uid}"
    assert image.labels["org.opencontainers.image.title"].startswith("farm ")
    out = client.containers.run(
        image_id,
        ["--help"],
        read_only=True,
        network_mode="none",
        cap_drop=["ALL"],
        labels={MANAGED_LABEL: "true"},
        remove=True,
    )
    assert b"usage: farm" in out
    whoami = client.containers.run(
        image_id,
        ["-c", "import os; print(os.getuid(), os.environ['PATH'].split(':')[0])"],
        entrypoint="python3",
        read_only=True,
        network_mode="none",
        labels={MANAGED_LABEL: "true"},
        remove=True,
    )
    assert whoami.decode().split() == [uid, "/opt/farm/bin"]

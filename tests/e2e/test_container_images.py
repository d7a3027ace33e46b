"""containers/: the farm Dockerfile builds (from farm's wheels, with no PyPI access
inside the build) and the one image runs the controller, the node monitor and the
collector's Python as its non-root user on a read-only root. (Its `fetch` target, farm
plus git, is built and run as the fetch pod by test_k8s_phases.py.) The registry base
cannot be pulled here, so BASE is swapped for the offline Debian bookworm image `make
setup` builds (the same suite)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from farm.k8s.names import COLLECTOR_UID
from farm.settings import MANAGED_LABEL

from .conftest import ROOT, docker_build, remove_built

CONTAINERS = ROOT / "containers"


@pytest.fixture(scope="module")
def built(client: docker.DockerClient) -> Iterator[list[str]]:
    """Ids of the images this module builds, removed by id after it."""
    before = {i.id for i in client.images.list(all=True)}
    ids: list[str] = []
    yield ids
    remove_built(client, ids, before)


@pytest.fixture(scope="module")
def farm_image(
    tmp_path_factory: pytest.TempPathFactory, farm_wheels: Path, built: list[str]
) -> str:
    """Built from a context holding only dist/wheels, as `make wheels` makes it."""
    ctx = tmp_path_factory.mktemp("image-context")
    shutil.copytree(farm_wheels, ctx / "dist" / "wheels")
    shutil.copy(CONTAINERS / "farm" / "Dockerfile", ctx / "Dockerfile")
    built.append(docker_build(ctx / "Dockerfile", ctx))
    return built[-1]


def run(client: docker.DockerClient, image: str, argv: list[str], **kw) -> str:
    out = client.containers.run(
        image,
        argv,
        read_only=True,
        network_mode="none",
        cap_drop=["ALL"],
        labels={MANAGED_LABEL: "true"},
        remove=True,
        **kw,
    )
    return out.decode()


def test_farm_image_runs_farm_as_the_collector_uid(client, farm_image: str) -> None:
    image = client.images.get(farm_image)
    assert image.attrs["Config"]["User"] == f"{COLLECTOR_UID}:{COLLECTOR_UID}"
    assert image.attrs["Config"]["Entrypoint"] == ["farm"]
    assert image.labels["org.opencontainers.image.title"] == "farm"
    probe = "import os; print(os.getuid(), os.environ['PATH'].split(':')[0])"
    whoami = run(client, farm_image, ["-c", probe], entrypoint="python3")
    assert whoami.split() == [str(COLLECTOR_UID), "/opt/farm/bin"]


@pytest.mark.parametrize(
    "argv",
    [
        ["controller", "--help"],
        ["node-monitor", "--help"],
        # The collector container's command (farm.k8s.objects): the module must import.
        ["-c", "import farm.k8s.collector"],
    ],
)
def test_one_image_serves_every_role(client, farm_image: str, argv: list[str]) -> None:
    entry = {"entrypoint": "python3"} if argv[0] == "-c" else {}
    run(client, farm_image, argv, **entry)  # raises ContainerError on a non-zero exit

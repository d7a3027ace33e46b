"""`farm image build farm`: the controller / node-monitor / collector image, made offline
(mmdebstrap + farm's wheels), runs the installed farm as a non-root user on a read-only
root, and `farm image export` gives a tarball that `docker load` restores with its labels.

The image is built once per session and reused while its recipe digest (Debian packages
plus the wheels' content) is unchanged, as `farm image build` itself does.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import docker
import pytest

from farm import __version__, wheelhouse
from farm.images import FARM_UID, build_image, recipe
from farm.k8s.names import COLLECTOR_UID
from farm.settings import MANAGED_LABEL, Settings
from farm.store import Store

from .conftest import ROOT, farm

LABELS = {MANAGED_LABEL: "true"}


@pytest.fixture(scope="module")
def image(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory, farm_wheels: Path
) -> dict:
    home = tmp_path_factory.mktemp("farm-home")
    settings, store = Settings(home=home), Store(home)
    return build_image("farm", settings, store, client, wheels=farm_wheels, log=lambda _: None)


def run(client: docker.DockerClient, image: dict, argv: list[str], **kw) -> str:
    out = client.containers.run(
        image["image_id"],
        argv,
        runtime="runsc",
        read_only=True,
        network_mode="none",
        cap_drop=["ALL"],
        labels=LABELS,
        remove=True,
        **kw,
    )
    return out.decode()


def test_the_image_runs_the_packaged_farm_version(client, image) -> None:
    assert run(client, image, ["--version"]).strip() == f"farm {__version__}"


def test_controller_prints_the_shipped_crd(client, image) -> None:
    crd = (ROOT / "manifests" / "crd" / "builds.farm.dev.yaml").read_text()
    assert run(client, image, ["controller", "--print-crd"]) == crd


def test_runs_as_the_collector_uid_not_root(client, image) -> None:
    assert FARM_UID == COLLECTOR_UID  # the collector container's runAsUser
    probe = ["-c", "import os; print(os.getuid(), os.getgid())"]
    ids = run(client, image, probe, entrypoint="python3")
    assert ids.split() == [str(FARM_UID), str(FARM_UID)]
    assert client.images.get(image["image_id"]).attrs["Config"]["User"] == f"{FARM_UID}:{FARM_UID}"


def _write_attempt(client: docker.DockerClient, image: dict, read_only: bool) -> tuple[int, list]:
    """Write to /var/lib/farm (the image user's own directory) and return the exit code
    and what dockerd saw change in the container's filesystem (the host's view).
    runc, not runsc: gVisor keeps its rootfs overlay in memory, so the host-side diff
    would be empty whatever happened."""
    c = client.containers.run(
        image["image_id"],
        ["-c", "open('/var/lib/farm/probe', 'w').write('x')"],
        entrypoint="python3",
        read_only=read_only,
        network_mode="none",
        labels=LABELS,
        detach=True,
    )
    try:
        code = c.wait()["StatusCode"]
        return code, c.diff() or []
    finally:
        c.remove(force=True)


def test_root_filesystem_is_not_writable_when_run_read_only(client, image) -> None:
    code, changes = _write_attempt(client, image, read_only=False)
    assert code == 0 and {"Path": "/var/lib/farm/probe", "Kind": 1} in changes  # the control
    code, changes = _write_attempt(client, image, read_only=True)
    assert code != 0 and changes == []


def test_labels_mark_it_farm_managed_with_its_recipe(client, image) -> None:
    labels = client.images.get(image["image_id"]).labels
    assert labels[MANAGED_LABEL] == "true"
    assert labels["io.farm.recipe"] == image["recipe"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert "io.farm.home" not in labels


def farm_cli(home: Path, *args: str) -> dict:
    done = farm(home, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_rebuilt_wheelhouse_of_the_same_source_is_up_to_date(image, tmp_path: Path) -> None:
    """As an air-gapped site runs it (--wheelhouse); freshly built wheels carry new zip
    timestamps, yet the recipe digest (their RECORDs) is unchanged: no rebuild."""
    wheels = wheelhouse.build_wheels(tmp_path / "wheels")
    again = farm_cli(tmp_path / "home", "image", "build", "farm", "--wheelhouse", str(wheels))
    assert again == image


def test_exported_tarball_loads_with_its_tag_and_labels(client, image, tmp_path: Path) -> None:
    """Last in the module: it removes the image and loads it back from the tarball."""
    tar = tmp_path / "farm.tar"
    info = farm_cli(tmp_path / "home", "image", "export", "farm", "-o", str(tar))
    assert info["image_id"] == image["image_id"]
    with tarfile.open(tar) as t:
        index = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert index[0]["RepoTags"] == [recipe("farm").tag]
    client.images.remove(image["image_id"], force=True)
    done = subprocess.run(["docker", "load", "-q", "-i", str(tar)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = client.images.get(recipe("farm").tag)
    assert loaded.id == image["image_id"]
    assert loaded.labels["io.farm.recipe"] == image["recipe"]

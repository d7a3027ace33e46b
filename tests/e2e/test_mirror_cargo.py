"""cargo itself reads a farm mirror: the image's cargo (bookworm's 0.66, which cannot
read sparse registries) uses the mirror directory as a ``local-registry``, mounted
read-only in a gVisor sandbox with no network, to resolve a project's dependencies on
real crates.io crates and fetch them. The Cargo.lock it writes carries crates.io's own
checksums (serde 1.0.152: bb7d1f0d…), which proves the index lines farm derived are the
ones cargo expects, and ``cargo fetch`` checks each .crate against its index cksum."""

from __future__ import annotations

import tomllib
from pathlib import Path

import docker
import pytest

from farm.mirror.store import Mirror
from farm.settings import DEFAULT_IMAGE, HOME_LABEL, MANAGED_LABEL
from tests.realcrates import REAL_CRATES, fill

DEPS = {
    "serde": "=1.0.152",
    "fnv": "=1.0.7",
    "cfg-if": "1",
    "hex": "0.4",
    "lazy_static": "1",
    "percent-encoding": "2",
}
MANIFEST = '[package]\nname = "probe"\nversion = "0.1.0"\nedition = "2018"\n\n[dependencies]\n'
CONFIG = """[source.crates-io]
replace-with = "farm-mirror"

[source.farm-mirror]
local-registry = "/mirror"
"""


def run_cargo(
    client: docker.DockerClient, home: Path, mirror: Path, project: Path
) -> tuple[int, str]:
    container = client.containers.create(
        DEFAULT_IMAGE,
        ["sh", "-c", "cargo generate-lockfile --offline && cargo fetch --offline"],
        labels={MANAGED_LABEL: "true", HOME_LABEL: str(home.resolve())},
        runtime="runsc",
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        environment={"CARGO_HOME": "/tmp/cargo-home", "HOME": "/tmp"},
        working_dir="/project",
        tmpfs={"/tmp": "size=256m,mode=1777"},
        mounts=[
            docker.types.Mount("/mirror", str(mirror), type="bind", read_only=True),
            docker.types.Mount("/project", str(project), type="bind", read_only=False),
        ],
    )
    try:
        container.start()
        code = int(container.wait(timeout=600)["StatusCode"])
        return code, container.logs().decode("utf-8", "replace")
    finally:
        container.remove(force=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / ".cargo").mkdir(parents=True)
    (project / "src").mkdir()
    (project / "src" / "lib.rs").write_text("")
    deps = "".join(f'{name} = "{req}"\n' for name, req in DEPS.items())
    (project / "Cargo.toml").write_text(MANIFEST + deps)
    (project / ".cargo" / "config.toml").write_text(CONFIG)
    project.chmod(0o777)  # the image's build user writes Cargo.lock here
    return project


def test_cargo_resolves_against_the_mirror_with_crates_io_checksums(
    client: docker.DockerClient, home: Path, tmp_path: Path, project: Path
) -> None:
    mirror = Mirror(tmp_path / "mirror").create()
    fill(mirror)
    code, logs = run_cargo(client, home, mirror.path, project)
    assert code == 0, logs
    lock = tomllib.loads((project / "Cargo.lock").read_text())
    locked = {p["name"]: p for p in lock["package"] if p["name"] != "probe"}
    assert set(locked) == {REAL_CRATES[n].name for n in DEPS}
    for name, package in locked.items():
        crate = REAL_CRATES[name]
        assert package["version"] == crate.version
        assert package["checksum"] == crate.cksum, name
        assert package["source"] == "registry+https://github.com/rust-lang/crates.io-index"
    assert locked["serde"]["checksum"].startswith("bb7d1f0d")


def test_cargo_refuses_a_crate_swapped_in_the_mirror(
    client: docker.DockerClient, home: Path, tmp_path: Path, project: Path
) -> None:
    """The index cksum farm wrote is what cargo checks the bytes against."""
    mirror = Mirror(tmp_path / "mirror").create()
    fill(mirror)
    swapped = mirror.crate_path("fnv", "1.0.7")
    swapped.write_bytes(swapped.read_bytes() + b"\0")
    code, logs = run_cargo(client, home, mirror.path, project)
    assert code != 0
    assert "fnv" in logs and "checksum" in logs, logs

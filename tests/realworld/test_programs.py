"""The realworld corpus (docs/realworld.md): real programs Debian ships, each built by farm
from a loopback mirror of Debian-derived crates.

Per program: fill a mirror with the librust-*-dev closure Debian builds it with (repacked,
origin ``debian-derived:<deb>``), resolve its lock against that mirror in a sandbox
(farm.fetch.resolve), serve the mirror on 127.0.0.1 and ``farm build --registry`` it through
the fetch phase in gVisor, twice (``--check 2``: bit-reproducible), then run the binary's
``--version`` in a gVisor sandbox, never on the host.

Marker ``realworld`` (every program; `make realworld`) is off by default; the smallest
program also carries ``realworld_ci`` and so runs with a plain ``pytest`` (pyproject addopts).
Downloads are cached in FARM_REALWORLD_CACHE (default ~/.cache/farm-realworld).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from farm.mirror.serve import MirrorServer

from farm.fetch.resolve import resolve_lock
from farm.settings import MANAGED_LABEL, Settings
from farm.store import Store
from tests.e2e.conftest import farm_json
from tests.realworld.programs import CORPUS, Program, fill_mirror, program_source

pytestmark = pytest.mark.realworld


def _param(i: int, program: Program) -> object:
    marks = [pytest.mark.realworld_ci] if i == 0 else []
    return pytest.param(program, id=program.id, marks=marks)


@pytest.fixture
def served(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Program, MirrorServer]]:
    program: Program = request.param
    mirror, crates = fill_mirror(program, tmp_path / "mirror")
    assert crates and all(c.origin.startswith("debian-derived:") for c in crates)
    server = MirrorServer(mirror, "127.0.0.1", 0).start()
    try:
        yield program, server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("served", [_param(i, p) for i, p in enumerate(CORPUS)], indirect=True)
def test_program_builds_reproducibly_from_the_derived_mirror(
    served: tuple[Program, MirrorServer], home: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    program, server = served
    src = program_source(program, server.mirror, tmp_path / "src")
    settings = Settings.from_env({"FARM_HOME": str(home)})
    resolved = resolve_lock(src, server.mirror.path, settings=settings, image=program.image)
    (src / "Cargo.lock").write_text(resolved.text)
    held = {(e.name, e.version): e.cksum for e in server.mirror.entries()}
    for package in resolved.lockfile.packages:
        if package.is_registry:  # every locked crate is the mirror's own, by checksum
            assert held[(package.name, package.version)] == package.checksum

    output = f"target/release/{program.binary}"
    code, built = farm_json(
        home,
        "build",
        str(src),
        "--registry",
        server.index_url,
        "--image",
        program.image,
        "--check",
        "2",
        "--output",
        output,
        "--",
        *program.argv,
    )
    assert code == 0, json.dumps(built, indent=1)[-4000:]
    assert built["reproducibility"]["result"] == "reproducible", built["reproducibility"]
    (artifact,) = built["artifacts"]
    binary = Store(home).blob_path(artifact["sha256"])
    version = run_in_gvisor(client, binary, program.image, "--version")
    assert program.version in version, version


def run_in_gvisor(client: docker.DockerClient, binary: Path, image: str, *args: str) -> str:
    """Run a built binary in gVisor, read-only, with no network (never on the host)."""
    out = client.containers.run(
        image,
        ["/app", *args],
        entrypoint=[],
        runtime="runsc",
        network_mode="none",
        remove=True,
        read_only=True,
        user="10001:10001",
        labels={MANAGED_LABEL: "true"},
        volumes={str(binary): {"bind": "/app", "mode": "ro"}},
    )
    return out.decode()

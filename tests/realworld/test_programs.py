"""The realworld corpus (docs/realworld.md): real programs Debian ships, each built by farm
from a loopback mirror of Debian-derived crates.

Per program: fill a mirror with the librust-*-dev closure Debian builds it with (repacked,
origin ``debian-derived:<deb>``), serve it on 127.0.0.1, and ``farm build --resolve-lock
MIRROR --registry URL --check 2``: the lock resolved against the mirror in a sandbox
(farm.fetch.resolve), every crate fetched and verified by the fetch phase, the build run
twice in gVisor and compared bit for bit. Then the binary's ``--version`` runs in a gVisor
sandbox, never on the host, and provenance is checked: the lock is farm's, every crate
the mirror's own, Debian-derived.

Marker ``realworld`` (every program; `make realworld`) is off by default; one program
(``CI_PROGRAM``) also carries ``realworld_ci`` and so runs with a plain ``pytest``
(pyproject addopts).
Downloads are cached in FARM_REALWORLD_CACHE (default ~/.cache/farm-realworld).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from farm.mirror import serve as mirror_serve
from farm.settings import MANAGED_LABEL
from farm.store import Store
from tests.e2e.conftest import farm, farm_json
from tests.realworld.programs import CI_PROGRAM, CORPUS, Program, fill_mirror, program_source

pytestmark = pytest.mark.realworld


def _param(program: Program) -> object:
    marks = [pytest.mark.realworld_ci] if program.name == CI_PROGRAM else []
    return pytest.param(program, id=program.id, marks=marks)


@pytest.fixture
def served(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Program, mirror_serve.MirrorServer]]:
    program: Program = request.param
    mirror, crates = fill_mirror(program, tmp_path / "mirror")
    assert crates and all(c.origin.startswith("debian-derived:") for c in crates)
    server = mirror_serve.MirrorServer(mirror, "127.0.0.1", 0).start()
    try:
        yield program, server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("served", [_param(p) for p in CORPUS], indirect=True)
def test_program_builds_reproducibly_from_the_derived_mirror(
    served: tuple[Program, mirror_serve.MirrorServer],
    home: Path,
    tmp_path: Path,
    client: docker.DockerClient,
) -> None:
    program, server = served
    src = program_source(program, server.mirror, tmp_path / "src")
    output = f"target/release/{program.binary}"
    code, built = farm_json(
        home,
        "build",
        str(src),
        "--resolve-lock",
        str(server.mirror.path),
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
        # No harness clock: each sandbox has farm's own deadline, and a --check 2 of a
        # real program on a loaded 2-core machine took over 15 minutes (docs/realworld.md).
        timeout=None,
    )
    assert code == 0 or built.get("reproducibility"), json.dumps(built, indent=1)[-4000:]
    verdict = built["reproducibility"]
    if verdict["result"] != "reproducible" and program.unreproducible:
        # farm's check did its job; the difference must be the known upstream one.
        said = _diffoscope(home, verdict, limit=None)
        assert program.unreproducible[1] in said, said[:6000]
        assert verdict["differing"] == [output], said[:6000]
    else:
        assert verdict["result"] == "reproducible", _diffoscope(home, verdict)
    dest = tmp_path / "artifacts"
    assert farm(home, "artifacts", built["id"], "--dest", str(dest)).returncode == 0
    version = run_in_gvisor(client, dest / output, program.image, "--version")
    assert program.version in version, version

    # Provenance: the lock is farm's, against this mirror; every crate is the mirror's own.
    envelope = tmp_path / "provenance.json"
    assert farm(home, "provenance", built["id"], "--out", str(envelope)).returncode == 0
    statement = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    lock = next(d for d in deps if d["name"] == "Cargo.lock")
    assert lock["annotations"]["mirror"] == str(server.mirror.path.resolve())
    held = {(e.name, e.version): e for e in server.mirror.entries()}
    crates = [d for d in deps if d.get("uri", "").startswith("pkg:cargo/")]
    assert crates
    for dep in crates:
        name, _, version = dep["uri"].removeprefix("pkg:cargo/").partition("@")
        entry = held[(name, version)]
        assert dep["digest"] == {"sha256": entry.cksum}
        assert entry.origin.startswith("debian-derived:")


def run_in_gvisor(client: docker.DockerClient, binary: Path, image: str, *args: str) -> str:
    """Run a built binary in gVisor, read-only, with no network (never on the host); the
    container is removed by id whatever happens."""
    container = client.containers.create(
        image,
        ["/app", *args],
        entrypoint=[],
        runtime="runsc",
        network_mode="none",
        read_only=True,
        user="10001:10001",
        labels={MANAGED_LABEL: "true"},
        volumes={str(binary): {"bind": "/app", "mode": "ro"}},
    )
    try:
        container.start()
        status = container.wait(timeout=120)["StatusCode"]
        out = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status == 0, out
    return out


def _diffoscope(home: Path, verdict: dict, limit: int | None = 6000) -> str:
    """The verdict and the head of diffoscope's report (all of it with ``limit=None``),
    kept in the failure message (the test's FARM_HOME is removed after it)."""
    sha = verdict.get("diffoscope_sha256")
    report = Store(home).blob_path(sha).read_text(errors="replace")[:limit] if sha else ""
    return f"{json.dumps(verdict, indent=1)}\n{report}"

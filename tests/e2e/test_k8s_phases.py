"""A cluster Build's two pods, replayed locally in farm's real sandbox (runsc, no network).

No cluster runs here, so the containers that ``farm.k8s.objects`` puts in the fetch Job
and the build Job are run as they are: image, command, env, workingDir, uid/gid and
volumeMounts are read from the generated Job objects (never retyped) and translated to a
SandboxSpec, with each volume a host directory (a subPath is a directory below it).

Phase 1 is the fetch pod, in the fetch image built from containers/farm (farm + git, no
cargo): its ``checkout`` init container runs git, whose "mirror" is a file:// repository
mounted into the sandbox and reached through git's insteadOf, set in the controller's
``fetch_env`` as a site would for its own mirror; then its ``fetch`` container runs
``farm fetch`` from the controller's registry, here a farm mirror directory mounted
read-only (``file:///mirror/``, so the pod needs no network) holding real crates.io
crates. Phase 2 runs the build container on the fetched volume, and must compile its
dependencies from /vendor, the fetched and checksummed copy, not from the builder image's
Debian registry (which holds the same serde 1.0.152).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from farm.backends.local import LocalBackend
from farm.ecosystems.cargo.vendor import CRATES_IO_SOURCE
from farm.k8s import objects
from farm.k8s.config import ClusterRegistry, ControllerConfig
from farm.k8s.objects import DEPS_DIR, VENDOR_DIR
from farm.k8s.resource import cluster_spec
from farm.mirror.store import Mirror
from farm.policy import SRC, TARGET
from farm.sandbox import Mount, SandboxSpec
from farm.settings import SANDBOX_UID, Settings
from farm.spec import DEFAULT_DISK
from tests.realcrates import REAL_CRATES

from .conftest import ROOT, docker_build, remove_built

MIRROR = "https://git.example.test/"
UPSTREAM = "/upstream"  # where the file:// repository is mounted in the fetch sandbox
MIRROR_DIR = "/mirror"  # where the crates mirror directory is mounted in the fetch sandbox
#: serde is also in the builder image's Debian registry (same version): a build that
#: read that registry instead of /vendor would still succeed, and must be caught.
CRATES = (REAL_CRATES["serde"], REAL_CRATES["fnv"])
GIT_ENV = {  # git reads config from these (git >= 2.31): a site's mirror rewrite
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": f"url.file://{UPSTREAM}/.insteadOf",
    "GIT_CONFIG_VALUE_0": MIRROR,
}

pytestmark = [
    pytest.mark.slow,
    # docker-py's attach stream keeps its socket (see test_repro.py): not this subject.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def fetch_image(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory, farm_wheels: Path
) -> Iterator[str]:
    """containers/farm's `fetch` target (farm from its wheels, plus git), built from a
    context holding only dist/wheels, as `make images` does."""
    before = {i.id for i in client.images.list(all=True)}
    ctx = tmp_path_factory.mktemp("fetch-image-context")
    shutil.copytree(farm_wheels, ctx / "dist" / "wheels")
    shutil.copy(ROOT / "containers" / "farm" / "Dockerfile", ctx / "Dockerfile")
    image = docker_build(ctx / "Dockerfile", ctx, target="fetch")
    yield image
    remove_built(client, [image], before)


def crates_mirror(root: Path, real_crates: dict[str, bytes]) -> Path:
    """A farm mirror directory holding CRATES, readable by the pod's uid."""
    mirror = Mirror(root / "mirror").create()
    for crate in CRATES:
        mirror.add_crate(real_crates[crate.name], crate.origin)
    for path in [mirror.path, *mirror.path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return mirror.path


def upstream(tmp_path: Path) -> tuple[Path, str]:
    """The mirror's hello.git: a crate using CRATES, with a Cargo.lock naming crates.io's
    checksums. Returns the mirror directory and the commit. Owned by the sandbox uid,
    because git refuses a repository of another owner."""
    app = tmp_path / "upstream" / "hello.git" / "app"
    (app / "src").mkdir(parents=True)
    (app / "Cargo.toml").write_text(CARGO_TOML)
    (app / "src" / "main.rs").write_text(MAIN_RS)
    (app / "Cargo.lock").write_text(_lockfile())
    git = ["git", "-C", str(app.parent), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "app"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True)
    _own(app.parents[1])
    return app.parents[1], commit.stdout.decode().strip()


CARGO_TOML = """\
[package]
name = "hello"
version = "0.1.0"
edition = "2021"

[dependencies]
fnv = "1"
serde = "1"
"""
MAIN_RS = """\
fn main() {
    let mut seen = fnv::FnvHashSet::default();
    seen.insert(serde::de::Unexpected::Unit.to_string());
    println!("{}", seen.len());
}
"""


def _lockfile() -> str:
    """Cargo.lock for CARGO_TOML: CRATES with crates.io's checksums."""
    lines = ["version = 3", "", "[[package]]", 'name = "hello"', 'version = "0.1.0"']
    lines.append(f"dependencies = {json.dumps(sorted(c.name for c in CRATES))}")
    for crate in sorted(CRATES, key=lambda c: c.name):
        lines += ["", "[[package]]", f'name = "{crate.name}"', f'version = "{crate.version}"']
        lines += [f'source = "{CRATES_IO_SOURCE}"', f'checksum = "{crate.cksum}"']
    return "\n".join(lines) + "\n"


def _own(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.chown(p, SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)


def pod_sandbox(
    job: dict[str, Any], container: dict[str, Any], volumes: dict[str, Path], settings: Settings
) -> SandboxSpec:
    """The SandboxSpec of one container of a Job's pod, as the kubelet would run it."""
    pod = job["spec"]["template"]["spec"]
    security = {**pod["securityContext"], **container["securityContext"]}
    assert security["readOnlyRootFilesystem"] and security["capabilities"] == {"drop": ["ALL"]}
    limits = container["resources"]["limits"]
    read_only_claims = {
        v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("readOnly")
    }
    return SandboxSpec(
        name=f"{job['metadata']['name']}-{container['name']}",
        image=container["image"],
        argv=[*container["command"], *container.get("args", [])],
        env={e["name"]: e["value"] for e in container["env"]},
        workdir=container["workingDir"],
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
        hostname=pod.get("hostname", "farm-fetch"),
        mounts=[
            Mount(
                source=volumes[m["name"]] / m.get("subPath", ""),
                target=m["mountPath"],
                read_only=m.get("readOnly", False) or m["name"] in read_only_claims,
            )
            for m in container["volumeMounts"]
        ],
        tmpfs={},
        # The local backend does not enforce it (the runner's workdisk does); recorded only.
        disk=int(limits.get("ephemeral-storage", DEFAULT_DISK)),
        cpus=int(limits["cpu"].removesuffix("m")) / 1000,
        memory=int(limits["memory"]),
        pids=1024,
        deadline_seconds=job["spec"]["activeDeadlineSeconds"],
        log_cap=1 << 20,
        labels=settings.base_labels,
    )


def run(spec: SandboxSpec, settings: Settings, client: docker.DockerClient) -> tuple[int, str]:
    output: list[bytes] = []
    result = LocalBackend(settings, client).run(spec, log=output.append, on_created=lambda _: None)
    return result.exit_code or 0, b"".join(output).decode(errors="replace")


def dirs(root: Path, *names: str) -> dict[str, Path]:
    """Fresh volumes, writable by the pod's uid as fsGroup would make them."""
    made = {}
    for name in names:
        made[name] = root / name
        made[name].mkdir(parents=True)
        os.chown(made[name], SANDBOX_UID, SANDBOX_UID)
    return made


def test_fetch_then_build_uses_only_the_vendored_sources(
    home: Path,
    client: docker.DockerClient,
    fetch_image: str,
    tmp_path: Path,
    real_crates: dict[str, bytes],
) -> None:
    repo, commit = upstream(tmp_path)
    mirror = crates_mirror(tmp_path, real_crates)
    settings = Settings(home=home)
    ref = objects.BuildRef("team-a", "hello", "uid-1")
    source = {"git": f"{MIRROR}hello.git", "revision": commit, "subdir": "app"}
    spec = cluster_spec({"source": source})
    sandbox = objects.sandbox_spec(ref, spec)
    registry = ClusterRegistry(name="volume", index=f"file://{MIRROR_DIR}/")
    config = ControllerConfig(fetch_image=fetch_image, fetch_env=GIT_ENV, registries=[registry])

    fetch = objects.fetch_job(ref, spec, sandbox, config)
    volumes = dirs(tmp_path, "src", "fetch-tmp")
    pod = fetch["spec"]["template"]["spec"]
    fetch_volumes = {"src": volumes["src"], "tmp": volumes["fetch-tmp"]}
    (checkout,) = pod["initContainers"]
    step1 = pod_sandbox(fetch, checkout, fetch_volumes, settings)
    step1.mounts.append(Mount(source=repo, target=UPSTREAM, read_only=True))
    code, log = run(step1, settings, client)
    assert code == 0, log
    (farm_fetch,) = pod["containers"]
    assert farm_fetch["command"][:2] == ["farm", "fetch"]
    step2 = pod_sandbox(fetch, farm_fetch, fetch_volumes, settings)
    step2.mounts.append(Mount(source=mirror, target=MIRROR_DIR, read_only=True))
    code, log = run(step2, settings, client)
    assert code == 0, log
    deps = volumes["src"] / DEPS_DIR
    vendored = {p.name for p in (deps / "vendor").iterdir()}
    assert vendored == _locked_crates(repo / "hello.git" / "app" / "Cargo.lock") != set()
    assert f'directory = "{VENDOR_DIR}"' in (deps / "cargo-config.toml").read_text()

    build = objects.build_job(ref, spec, sandbox, config, artifact_url="http://127.0.0.1:8443")
    pod = build["spec"]["template"]["spec"]
    volumes |= dirs(tmp_path, "target", "out", "tmp")
    phase2 = pod_sandbox(build, pod["initContainers"][0], volumes, settings)
    code, log = run(phase2, settings, client)
    assert code == 0, log
    sources = _compiled_sources(volumes["target"])
    assert f"{SRC}/src/main.rs" in sources, sources
    outside = sorted(s for s in sources if not s.startswith((f"{VENDOR_DIR}/", f"{SRC}/")))
    assert outside == [], f"compiled from outside /vendor and /src: {outside[:5]}"
    for crate in CRATES:
        prefix = f"{VENDOR_DIR}/{crate.name}-{crate.version}/"
        assert any(s.startswith(prefix) for s in sources), (crate.name, sources)


def _locked_crates(lock: Path) -> set[str]:
    packages = tomllib.loads(lock.read_text())["package"]
    return {f"{p['name']}-{p['version']}" for p in packages if "source" in p}


def _compiled_sources(target: Path) -> set[str]:
    """The root source file of every crate rustc compiled, from cargo's dep-info files
    (absolute sandbox paths: they name the registry each crate really came from)."""
    roots = set()
    for dep_info in target.glob("*/deps/*.d"):
        first = dep_info.read_text().splitlines()[0]
        roots.add(first.split(": ", 1)[1].split()[0])
    # The workspace's own crate is named relative to the cwd (/src).
    absolute = {r if r.startswith("/") else f"{SRC}/{r}" for r in roots}
    return {r for r in absolute if not r.startswith(TARGET)}

"""A cluster Build's two pods, replayed locally in farm's real sandbox (runsc, no network).

No cluster runs here, so the containers that ``farm.k8s.objects`` puts in the fetch Job
and the build Job are run as they are: image, command, env, workingDir, uid/gid and
volumeMounts are read from the generated Job objects (never retyped) and translated to a
SandboxSpec, with each volume a host directory (a subPath is a directory below it).

Phase 1 runs FETCH_SCRIPT in the fetch image. The git "mirror" is a file:// repository
mounted into the sandbox and reached through git's insteadOf, set in the controller's
``fetch_env`` as a site would for its own mirror; the crates "mirror" is the image's
Debian directory registry. Phase 2 runs the build container on the fetched volume, and
must compile its dependencies from /vendor, the fetched and checksummed copy, not from
whatever registry the builder image happens to carry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import docker
import pytest

from farm.backends.local import LocalBackend
from farm.images import build_image
from farm.k8s import objects
from farm.k8s.config import ControllerConfig
from farm.k8s.objects import VENDOR_DIR
from farm.k8s.resource import cluster_spec
from farm.policy import SRC, TARGET
from farm.sandbox import Mount, SandboxSpec
from farm.settings import SANDBOX_UID, Settings
from farm.store import Store

from .conftest import EXAMPLES

MIRROR = "https://git.example.test/"
UPSTREAM = "/upstream"  # where the file:// repository is mounted in the fetch sandbox
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
def fetch_image(client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    home = tmp_path_factory.mktemp("image-home")
    built = build_image("fetch", Settings(home=home), Store(home), client, log=lambda _: None)
    return built["tag"]


def upstream(tmp_path: Path) -> tuple[Path, str]:
    """The mirror's hello.git, holding examples/hello-serde under app/: (mirror dir, commit).
    Owned by the sandbox uid, because git refuses repositories of another owner."""
    repo = tmp_path / "upstream" / "hello.git"
    shutil.copytree(EXAMPLES / "hello-serde", repo / "app", ignore=shutil.ignore_patterns("target"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "app"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True)
    _own(repo.parent)
    return repo.parent, commit.stdout.decode().strip()


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
    home: Path, client: docker.DockerClient, fetch_image: str, tmp_path: Path
) -> None:
    repo, commit = upstream(tmp_path)
    settings = Settings(home=home)
    ref = objects.BuildRef("team-a", "hello", "uid-1")
    source = {"git": f"{MIRROR}hello.git", "revision": commit, "subdir": "app"}
    # A debug build: the release profile's LTO would only add CI time, not coverage.
    spec = cluster_spec({"source": source, "argv": ["cargo", "build", "--locked", "--offline"]})
    sandbox = objects.sandbox_spec(ref, spec)
    config = ControllerConfig(fetch_image=fetch_image, fetch_env=GIT_ENV)

    fetch = objects.fetch_job(ref, spec, sandbox, config)
    volumes = dirs(tmp_path, "src", "fetch-tmp")
    (volumes["src"] / "vendor").mkdir()  # the kubelet creates a missing subPath
    _own(volumes["src"])
    container = fetch["spec"]["template"]["spec"]["containers"][0]
    fetch_volumes = {"src": volumes["src"], "tmp": volumes["fetch-tmp"]}
    phase1 = pod_sandbox(fetch, container, fetch_volumes, settings)
    phase1.mounts.append(Mount(source=repo, target=UPSTREAM, read_only=True))
    code, log = run(phase1, settings, client)
    assert code == 0, log
    vendored = {p.name for p in (volumes["src"] / "vendor").iterdir()}
    assert vendored == _locked_crates(repo / "hello.git" / "app" / "Cargo.lock")

    build = objects.build_job(ref, spec, sandbox, config)
    pod = build["spec"]["template"]["spec"]
    volumes |= dirs(tmp_path, "target", "out", "tmp")
    phase2 = pod_sandbox(build, pod["initContainers"][0], volumes, settings)
    code, log = run(phase2, settings, client)
    assert code == 0, log
    sources = _compiled_sources(volumes["target"])
    assert f"{SRC}/src/main.rs" in sources and len(sources) > 5, sources
    outside = sorted(s for s in sources if not s.startswith((f"{VENDOR_DIR}/", f"{SRC}/")))
    assert outside == [], f"compiled from outside /vendor and /src: {outside[:5]}"


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

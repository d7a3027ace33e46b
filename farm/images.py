"""Build farm's builder images offline: mmdebstrap a Debian rootfs, then `docker import`.

Callers: ``farm image build`` and the bootstrap. No registry is reachable, so images are
made from Debian packages. SOURCE_DATE_EPOCH makes the rootfs tarball reproducible for a
given mirror state; its sha256 is recorded next to the Docker image id.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import docker

from farm.backends.docker_errors import translated
from farm.digests import file_sha256
from farm.errors import ImageError
from farm.settings import MANAGED_LABEL, Settings
from farm.store import Store

#: Debian's vendored crates as a cargo directory source; found for any cwd because it
#: sits at the root (cargo reads /.cargo/config.toml from every ancestor directory).
CARGO_CONFIG = """\
[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "/usr/share/cargo/registry"

[net]
offline = true
"""


@dataclass(frozen=True)
class Recipe:
    name: str
    tag: str
    suite: str
    mirror: str
    packages: tuple[str, ...]
    epoch: int
    files: tuple[tuple[str, str], ...] = ()

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


RECIPES = {
    "rust": Recipe(
        name="rust",
        tag="farm/rust:bookworm",
        suite="bookworm",
        mirror="http://deb.debian.org/debian",
        packages=(
            "cargo",
            "rustc",
            "gcc",
            "libc6-dev",
            "pkg-config",
            "ca-certificates",
            "librust-serde-dev",
            "librust-serde-derive-dev",
            "librust-serde-json-dev",
            "librust-regex-dev",
        ),
        epoch=1_700_000_000,
        files=(("/.cargo/config.toml", CARGO_CONFIG),),
    )
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ImageError(f"no image recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None


def build_rootfs(r: Recipe, dest: Path, log: Callable[[str], None] = print) -> str:
    """Create the rootfs tarball ``dest`` with mmdebstrap; return its sha256.

    Raises ImageError when mmdebstrap is missing or fails.
    """
    if not shutil.which("mmdebstrap"):
        raise ImageError("mmdebstrap is not installed; run `farm host setup`")
    with tempfile.TemporaryDirectory(prefix="farm-recipe-") as tmp:
        hooks = []
        for i, (path, content) in enumerate(r.files):
            local = Path(tmp) / f"file{i}"
            local.write_text(content)
            parent = os.path.dirname(path)
            hooks.append(f'--customize-hook=mkdir -p "$1{parent}" && cp {local} "$1{path}"')
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            f"--include={','.join(r.packages)}",
            '--aptopt=Acquire::Languages "none"',
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            *hooks,
            r.suite,
            str(dest),
            r.mirror,
        ]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(r.epoch)}
        log(f"farm: building the {r.name} rootfs with mmdebstrap ({r.suite})")
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return file_sha256(dest)


def build_image(
    name: str,
    settings: Settings,
    store: Store,
    client: docker.DockerClient,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Build and import the named image unless an identical one exists (idempotent).

    Returns ``{tag, image_id, rootfs_sha256, recipe}``. Raises ImageError.
    """
    r = recipe(name)
    existing = _existing(client, r)
    if existing and not force:
        log(f"farm: image {r.tag} is up to date ({existing['image_id'][:19]})")
        store.record_image(r.tag, existing["image_id"], existing["rootfs_sha256"], r.digest)
        return {"tag": r.tag, **existing, "recipe": r.digest}
    images = settings.home / "images"
    images.mkdir(parents=True, exist_ok=True)
    tar = images / f"{r.name}-{r.digest[:12]}.tar"
    try:
        rootfs = build_rootfs(r, tar, log)
        image_id = _import(client, r, tar, rootfs, settings)
    finally:
        tar.unlink(missing_ok=True)
    store.record_image(r.tag, image_id, rootfs, r.digest)
    log(f"farm: imported {r.tag} {image_id[:19]} (rootfs sha256:{rootfs[:16]}…)")
    return {"tag": r.tag, "image_id": image_id, "rootfs_sha256": rootfs, "recipe": r.digest}


def _existing(client: docker.DockerClient, r: Recipe) -> dict[str, str] | None:
    with translated(f"look up {r.tag}"):
        try:
            image = client.images.get(r.tag)
        except docker.errors.ImageNotFound:
            return None
    labels = image.labels or {}
    if labels.get("io.farm.recipe") != r.digest:
        return None
    return {"image_id": str(image.id), "rootfs_sha256": labels.get("io.farm.rootfs", "")}


def _import(
    client: docker.DockerClient, r: Recipe, tar: Path, rootfs: str, settings: Settings
) -> str:
    labels = {
        **settings.base_labels,
        "io.farm.recipe": r.digest,
        "io.farm.rootfs": rootfs,
        "org.opencontainers.image.title": f"farm {r.name} builder",
    }
    labels.pop("io.farm.home", None)  # images are shared by every FARM_HOME on a host
    changes = [f"LABEL {k}={json.dumps(v)}" for k, v in sorted(labels.items())]
    changes.append('ENV PATH="/usr/local/bin:/usr/bin:/bin"')
    repo, tag = r.tag.rsplit(":", 1)
    with translated(f"import {r.tag}"):
        client.api.import_image_from_file(str(tar), repository=repo, tag=tag, changes=changes)
        return str(client.images.get(r.tag).id)


__all__ = ["MANAGED_LABEL", "RECIPES", "build_image", "build_rootfs", "recipe"]

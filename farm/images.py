"""Build farm's images offline: mmdebstrap a Debian rootfs, then `docker import`.

Callers: ``farm image build`` / ``farm image export`` and the bootstrap. No registry is
reachable, so images are made from Debian packages (plus, for the ``farm`` image, a
wheelhouse: ``farm.wheelhouse``). SOURCE_DATE_EPOCH makes the rust builder's rootfs
tarball reproducible for a given mirror state; its sha256 is recorded next to the Docker
image id. Each image is labelled with its recipe's digest, which makes builds idempotent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import docker

from farm import wheelhouse
from farm.backends.docker_errors import translated
from farm.digests import file_sha256
from farm.ecosystems.cargo import imagefacts
from farm.errors import ImageError, InputError
from farm.k8s.names import COLLECTOR_UID
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
DEBIAN = "http://deb.debian.org/debian"
#: The installed distribution's version (== farm.__version__), read from its metadata
#: because ``from farm import __version__`` breaks when a directory named farm sits in
#: the cwd (it shadows the package as a namespace package, e.g. with cwd=/ on CI hosts).
VERSION = metadata.version("farm")
#: The venv of the farm image, and its user: build pods run the collector from this
#: image as COLLECTOR_UID, and the chart runs the controller with the same uid.
FARM_PREFIX = "/opt/farm"
FARM_UID = COLLECTOR_UID


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    tag: str
    suite: str
    mirror: str
    packages: tuple[str, ...]
    epoch: int
    files: tuple[tuple[str, str], ...] = ()
    #: Python distributions pip installs into FARM_PREFIX, only from a wheelhouse.
    python: tuple[str, ...] = ()
    #: (wheel file, sha256 of its RECORD): filled in at build time from the wheelhouse.
    wheels: tuple[tuple[str, str], ...] = ()
    #: A non-root uid (= gid) created in the rootfs, owning /var/lib/farm; 0: none.
    user: int = 0
    #: Dockerfile instructions applied by `docker import --change` (USER, ENTRYPOINT...).
    config: tuple[str, ...] = ()
    title: str = ""
    description: str = ""
    #: Label the image with its Rust toolchain (farm.ecosystems.cargo.imagefacts), read from the
    #: rootfs's dpkg status at build time: builds are checked against it before they run.
    toolchain: bool = False

    @property
    def digest(self) -> str:
        # Fields at their default are left out, so adding a field to Recipe does not
        # change an existing recipe's digest (which would force every host to rebuild).
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


RUST = Recipe(
    name="rust",
    tag="farm/rust:bookworm",
    suite="bookworm",
    mirror=DEBIAN,
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
    toolchain=True,
)
#: Debian suites the rust and fetch images are built from (docs/toolchains.md): the
#: same packages exist in each; the first is the recipes' own.
SUITES = ("bookworm", "trixie")
RECIPES = {
    "rust": RUST,
    # The Kubernetes fetch phase (farm.k8s.objects.FETCH_SCRIPT): git, plus the same
    # cargo and crates, whose Debian directory registry is the site's crates mirror.
    "fetch": dataclasses.replace(
        RUST,
        name="fetch",
        tag="farm/fetch:bookworm",
        packages=(*RUST.packages, "git"),
        title="farm fetch",
        description="git and cargo vendor for the fetch phase of farm Builds",
    ),
    # One image for the controller, the node monitor and the build pods' collector:
    # the same package and dependencies, told apart only by the command.
    "farm": Recipe(
        name="farm",
        tag=f"farm/farm:{VERSION}",
        suite="bookworm",
        mirror=DEBIAN,
        packages=("python3", "python3-venv", "ca-certificates"),
        epoch=1_700_000_000,
        python=("farm",),
        user=FARM_UID,
        config=(
            f"ENV PATH={FARM_PREFIX}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV FARM_HOME=/var/lib/farm",
            "ENV PYTHONDONTWRITEBYTECODE=1",
            "ENV PYTHONUNBUFFERED=1",
            f"USER {FARM_UID}:{FARM_UID}",
            "EXPOSE 8443 9090 9091",
            'ENTRYPOINT ["farm"]',
            'CMD ["controller"]',
        ),
        title="farm",
        description="farm's controller, node monitor and artifact collector",
    ),
}


def recipe(name: str, suite: str | None = None) -> Recipe:
    """The named recipe, from Debian ``suite`` (default: the recipe's own). Only the
    toolchain images (rust, fetch) come in other suites; their tag names the suite."""
    try:
        r = RECIPES[name]
    except KeyError:
        raise ImageError(f"no image recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None
    if suite is None or suite == r.suite:
        return r
    if not r.toolchain or suite not in SUITES:
        choices = ", ".join(SUITES) if r.toolchain else r.suite
        raise InputError(f"--suite {suite}: the {name} image is built from {choices}")
    repo = r.tag.rsplit(":", 1)[0]
    return dataclasses.replace(r, suite=suite, tag=f"{repo}:{suite}")


def build_rootfs(
    r: Recipe, dest: Path, log: Callable[[str], None] = print, wheels: Path | None = None
) -> str:
    """Create the rootfs tarball ``dest`` with mmdebstrap; return its sha256.

    ``wheels`` is the wheelhouse a recipe with ``python`` installs from. Raises
    ImageError when mmdebstrap is missing or fails.
    """
    if not shutil.which("mmdebstrap"):
        raise ImageError("mmdebstrap is not installed; run `farm host setup`")
    with tempfile.TemporaryDirectory(prefix="farm-recipe-") as tmp:
        hooks = [*_file_hooks(r, Path(tmp)), *_user_hooks(r), *_python_hooks(r, wheels)]
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
        log(f"farm: building the {r.name} rootfs with mmdebstrap ({r.suite}, {r.mirror})")
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return file_sha256(dest)


def _file_hooks(r: Recipe, tmp: Path) -> list[str]:
    hooks = []
    for i, (path, content) in enumerate(r.files):
        local = tmp / f"file{i}"
        local.write_text(content)
        parent = os.path.dirname(path)
        hooks.append(f'--customize-hook=mkdir -p "$1{parent}" && cp {local} "$1{path}"')
    return hooks


def _user_hooks(r: Recipe) -> list[str]:
    if not r.user:
        return []
    uid = r.user
    return [
        f'--customize-hook=echo "farm:x:{uid}:{uid}:farm:/var/lib/farm:/usr/sbin/nologin"'
        ' >> "$1/etc/passwd"',
        f'--customize-hook=echo "farm:x:{uid}:" >> "$1/etc/group"',
        f'--customize-hook=install -d -o {uid} -g {uid} -m 0750 "$1/var/lib/farm"',
    ]


def _python_hooks(r: Recipe, wheels: Path | None) -> list[str]:
    """A venv with ``r.python`` installed from the wheelhouse only (``--no-index``): the
    rootfs build reaches nothing but the Debian mirror. Bytecode is compiled now because
    the root is read-only at run time."""
    if not r.python:
        return []
    if wheels is None:
        raise ImageError(f"the {r.name} image installs {', '.join(r.python)}: give a wheelhouse")
    inside = "/tmp/farm-wheels"
    pip = f"{FARM_PREFIX}/bin/pip install -q --no-index --no-cache-dir --no-compile"
    return [
        f'--customize-hook=chroot "$1" python3 -m venv {FARM_PREFIX}',
        f'--customize-hook=cp -r {shlex.quote(str(wheels))} "$1{inside}"',
        f'--customize-hook=chroot "$1" {pip} --find-links {inside} {" ".join(r.python)}',
        f'--customize-hook=chroot "$1" {FARM_PREFIX}/bin/python -m compileall -q'
        f" --invalidation-mode unchecked-hash {FARM_PREFIX}",
        f'--customize-hook=rm -rf "$1{inside}"',
    ]


def build_image(
    name: str,
    settings: Settings,
    store: Store,
    client: docker.DockerClient,
    *,
    force: bool = False,
    wheels: Path | None = None,
    mirror: str | None = None,
    suite: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Build and import the named image unless an identical one exists (idempotent).

    ``mirror`` replaces the recipe's Debian mirror (an air-gapped site's own);
    ``wheels`` is a wheelhouse for the farm image (default: built from farm's source);
    ``suite`` a Debian suite of SUITES for the toolchain images.
    Returns ``{tag, image_id, rootfs_sha256, recipe}``. Raises ImageError.
    """
    r = recipe(name, suite)
    if wheels is not None and not r.python:
        raise InputError(f"--wheelhouse is for the farm image; the {name} image has no Python")
    if mirror:
        r = dataclasses.replace(r, mirror=mirror)
    with tempfile.TemporaryDirectory(prefix="farm-wheels-") as tmp:
        if r.python:
            wheels = wheels or _built_wheels(Path(tmp), log)
            r = dataclasses.replace(r, wheels=wheelhouse.digests(wheels))
        return _build(r, settings, store, client, force=force, wheels=wheels, log=log)


def _built_wheels(tmp: Path, log: Callable[[str], None]) -> Path:
    log("farm: building wheels of farm and its dependencies (pip wheel)")
    return wheelhouse.build_wheels(tmp)


def _build(
    r: Recipe,
    settings: Settings,
    store: Store,
    client: docker.DockerClient,
    *,
    force: bool,
    wheels: Path | None,
    log: Callable[[str], None],
) -> dict[str, str]:
    existing = _existing(client, r)
    if existing and not force:
        log(f"farm: image {r.tag} is up to date ({existing['image_id'][:19]})")
        store.record_image(r.tag, existing["image_id"], existing["rootfs_sha256"], r.digest)
        return {"tag": r.tag, **existing, "recipe": r.digest}
    images = settings.home / "images"
    images.mkdir(parents=True, exist_ok=True)
    tar = images / f"{r.name}-{r.digest[:12]}.tar"
    try:
        rootfs = build_rootfs(r, tar, log, wheels)
        extra = imagefacts.labels_of_rootfs(tar) if r.toolchain else {}
        image_id = _import(client, r, tar, rootfs, settings, extra)
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


def labels(r: Recipe, rootfs: str, settings: Settings) -> dict[str, str]:
    """farm's labels (io.farm.managed, the recipe digest) and the OCI ones."""
    values = {
        **settings.base_labels,
        "io.farm.recipe": r.digest,
        "io.farm.rootfs": rootfs,
        "org.opencontainers.image.title": r.title or f"farm {r.name} builder",
        "org.opencontainers.image.version": VERSION,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": f"debian:{r.suite} (mmdebstrap, {r.mirror})",
    }
    if r.description:
        values["org.opencontainers.image.description"] = r.description
    values.pop("io.farm.home", None)  # images are shared by every FARM_HOME on a host
    return values


def _import(
    client: docker.DockerClient,
    r: Recipe,
    tar: Path,
    rootfs: str,
    settings: Settings,
    extra: dict[str, str],
) -> str:
    values = {**labels(r, rootfs, settings), **extra}
    changes = [f"LABEL {k}={json.dumps(v)}" for k, v in sorted(values.items())]
    changes.append('ENV PATH="/usr/local/bin:/usr/bin:/bin"')
    changes.extend(r.config)
    repo, tag = r.tag.rsplit(":", 1)
    with translated(f"import {r.tag}"):
        client.api.import_image_from_file(str(tar), repository=repo, tag=tag, changes=changes)
        return str(client.images.get(r.tag).id)


def export_image(
    name: str, dest: Path, client: docker.DockerClient, suite: str | None = None
) -> dict[str, str]:
    """`docker save` the named image to ``dest``, for nodes without a registry:
    ``ctr -n k8s.io images import`` or ``docker load`` reads it. Raises ImageError."""
    tag = recipe(name, suite).tag
    with translated(f"export {tag}"):
        try:
            image = client.images.get(tag)
        except docker.errors.ImageNotFound:
            suite_flag = f" --suite {suite}" if suite else ""
            raise ImageError(
                f"no image {tag}; run `farm image build {name}{suite_flag}` first"
            ) from None
        with dest.open("wb") as out:
            for chunk in image.save(named=True):
                out.write(chunk)
    return {"tag": tag, "image_id": str(image.id), "file": str(dest), "sha256": file_sha256(dest)}


__all__ = [
    "MANAGED_LABEL",
    "RECIPES",
    "SUITES",
    "build_image",
    "build_rootfs",
    "export_image",
    "recipe",
]

"""Where dependency layers live: ``$FARM_HOME/layers/<key>/{tree,meta.json}``.

Callers: ``farm.layers.flow`` (find a layer, keep a new one), ``farm.runner`` (the
digest is re-checked right before a build mounts a layer) and ``farm.cli``
(``farm gc`` bounds the layers by size and count). A layer is written once, by farm,
from the target tree of a clean observed dependency build (``keep``), into a temporary
directory renamed into place (owned by the sandbox uid with normalised modes, below
directories only root can enter); nothing ever writes it afterwards. Builds see it only as
the read-only lower directory of an overlay whose upper directory is their own
(farm.layers.overlay), and its digest is re-computed before every mount, so a layer
altered on the host is dropped, never mounted.

The key names the tenant: a layer is never used by another tenant. (Sharing a layer
across tenants needs it verified reproducible by ``--check``; layers are not checked
yet, so none is shared: docs/layers.md.)
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from farm.errors import InfrastructureError
from farm.settings import SANDBOX_UID
from farm.snapshot import remove_tree

#: Key material format: bump when what goes into a key changes. 2: layers have
#: normalised owners and modes, and the digest covers directories and owners
#: (layers of version 1 are never used). 3: the key names the crates' source (the
#: image or a registry).
KEY_VERSION = 3

#: Bound on copying a dependency build's target tree into a layer.
COPY_TIMEOUT_SECONDS = 1800

#: A ``.new-*`` copy older than this is a keep that died; ``farm gc`` removes it. Well
#: above the copy bound, so a keep still digesting its copy is never swept.
STALE_SECONDS = 3 * COPY_TIMEOUT_SECONDS

#: Bits a kept tree never has: the sandbox's build scripts chose its modes.
_STRIPPED = stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class Layer:
    """One stored layer. ``digest`` covers every entry of ``tree``, directories too: path,
    type, mode, owner, link target, content."""

    key: str
    tenant: str
    digest: str
    size: int
    files: int
    built_by: str
    created_at: float
    tree: Path

    @property
    def id(self) -> str:
        return self.key.removeprefix("sha256:")[:16]


def layer_key(material: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of ``material`` (farm.layers.flow builds it)."""
    canonical = json.dumps({"v": KEY_VERSION, **material}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def tree_digest(root: Path) -> tuple[str, int, int]:
    """(sha256 digest, bytes, non-directory entries) of the tree at ``root``, following no link.

    Every entry counts, directories (empty ones too) and ``root`` itself included, by
    path, type and mode bits, and owner: a mode or owner changed on the host is seen."""
    h = hashlib.sha256()
    size = count = 0
    seen: set[int] = set()  # cargo hard-links uplifted files: their bytes count once
    st = os.lstat(root)
    h.update(f".\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0".encode())
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            path = Path(dirpath, name)
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            count += not stat.S_ISDIR(st.st_mode)
            h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode() + b"\0")
            elif stat.S_ISREG(st.st_mode):
                size += 0 if st.st_ino in seen else st.st_size
                seen.add(st.st_ino)
                h.update(_file_sha(path) + b"\0")
    return "sha256:" + h.hexdigest(), size, count


def normalise(root: Path) -> None:
    """Give every entry of the tree at ``root`` the sandbox uid and gid, no setuid or
    setgid bit and no group/other write (``chown -R 10001:10001; chmod -R
    u-s,g-s,go-w``), following no link.

    Not root: the overlay's entries keep the lower's owner, and cargo, running as the
    sandbox uid, must create files in the layer's directories (``.cargo-lock``) and
    rewrite a stale unit's files. The owner is what farm sets, never what the build
    left; the tree sits below directories only root can enter (``LayerStore``), so no
    host process of that uid can reach it. The tree is a copy only farm can reach, so
    nothing changes it under this walk."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = [Path(dirpath)] if dirpath == str(root) else []
        for path in here + [Path(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(path)
            os.lchown(path, SANDBOX_UID, SANDBOX_UID)
            if not stat.S_ISLNK(st.st_mode):  # a link's own mode means nothing on Linux
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~_STRIPPED)


def _file_sha(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


class LayerStore:
    def __init__(self, home: Path) -> None:
        self.root = home / "layers"

    def _dir(self, key: str) -> Path:
        return self.root / key.removeprefix("sha256:")

    def find(self, key: str, tenant: str) -> Layer | None:
        """The layer stored under ``key`` for ``tenant``, or None."""
        layer = self._load(self._dir(key))
        if layer is None or layer.key != key or layer.tenant != tenant:
            return None
        os.utime(self._dir(key) / "meta.json")  # last used, for `farm gc`
        return layer

    def intact(self, layer: Layer) -> bool:
        """Whether ``layer``'s files are still exactly what was kept; a layer that is not
        is removed, so it is never mounted."""
        digest, _, _ = tree_digest(layer.tree)
        if digest == layer.digest:
            return True
        self.remove(layer.key)
        return False

    def keep(self, key: str, tenant: str, target: Path, built_by: str) -> Layer:
        """Copy the target tree of a clean dependency build into a new layer.

        Raises InfrastructureError if the copy fails or times out (the half-made copy is
        removed), or if the final name holds something that is not a layer."""
        self._make_root()
        tmp = self.root / f".new-{built_by}"
        remove_tree(tmp)
        tmp.mkdir(mode=0o700)
        try:
            layer = self._fill(tmp, key, tenant, target, built_by)
        except BaseException:
            remove_tree(tmp)
            raise
        final = self._dir(key)
        try:
            # Rename or drop: never remove what is at the final name. Another dependency
            # build of the same key may have renamed its copy there, and builds may have
            # it mounted already, so it is kept and this copy dropped.
            os.rename(tmp, final)
        except OSError:
            remove_tree(tmp)
            existing = self._load(final)
            if existing is None:
                raise InfrastructureError(
                    f"{final} already holds something that is not a layer; "
                    "`farm gc` removes it once it is stale, or remove it by hand"
                ) from None
            return existing
        return layer

    def _make_root(self) -> None:
        # 0700: only root (farm, and the kernel's overlay, which opens the lower with the
        # mounter's credentials) enters; no other host user reaches a layer's files.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def _fill(self, tmp: Path, key: str, tenant: str, target: Path, built_by: str) -> Layer:
        """Copy ``target`` into ``tmp/tree``, normalise it, digest it, write meta.json."""
        # -a: links stay links (never followed), hard links stay shared, mtimes kept:
        # cargo's fingerprints compare them. Modes and owners are then made farm's.
        argv = ["cp", "-a", "--reflink=auto", f"{target}/.", str(tmp / "tree")]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=COPY_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired:
            raise InfrastructureError(
                f"could not keep the dependency layer: copying {target} timed out after "
                f"{COPY_TIMEOUT_SECONDS} s; the build runs cold (check the disk under "
                f"{self.root})"
            ) from None
        if done.returncode != 0:
            raise InfrastructureError(f"could not keep the dependency layer: {done.stderr}")
        normalise(tmp / "tree")
        digest, size, files = tree_digest(tmp / "tree")
        layer = Layer(
            key, tenant, digest, size, files, built_by, time.time(), self._dir(key) / "tree"
        )
        meta = {k: v for k, v in asdict(layer).items() if k != "tree"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        return layer

    def remove(self, key: str) -> None:
        remove_tree(self._dir(key))

    def in_use(self, layer: Layer) -> bool:
        """Whether a running build has ``layer`` mounted (it is an overlay's lower dir)."""
        wanted = f"lowerdir={layer.tree}"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            return any(
                wanted in option.split(",")
                for line in table
                if " - overlay " in line
                for option in [line.rsplit(" ", 1)[-1].strip()]
            )

    def all(self) -> list[Layer]:
        """Every stored layer, most recently used first."""
        if not self.root.exists():
            return []
        found = []
        for entry in self.root.iterdir():
            layer = None if entry.name.startswith(".") else self._load(entry)
            if layer is not None:
                found.append((os.stat(entry / "meta.json").st_mtime, layer))
        return [layer for _, layer in sorted(found, key=lambda p: p[0], reverse=True)]

    def prune(self, max_bytes: int, max_count: int) -> tuple[int, int]:
        """Drop least recently used layers beyond ``max_count`` or ``max_bytes`` in all.
        A layer a running build has mounted is left for the next pass. Returns (layers
        dropped, bytes freed)."""
        self.sweep_stale()
        total = dropped = freed = 0
        for index, layer in enumerate(self.all()):
            total += layer.size
            if (index >= max_count or total > max_bytes) and not self.in_use(layer):
                self.remove(layer.key)
                dropped, freed = dropped + 1, freed + layer.size
        return dropped, freed

    def sweep_stale(self) -> None:
        """Remove what a keep that died left: ``.new-*`` copies, and entries that are not
        layers, older than STALE_SECONDS (a keep in progress is younger)."""
        if not self.root.exists():
            return
        cutoff = time.time() - STALE_SECONDS
        for entry in self.root.iterdir():
            leftover = entry.name.startswith(".new-") or (
                not entry.name.startswith(".") and self._load(entry) is None
            )
            if leftover and os.lstat(entry).st_mtime < cutoff:
                remove_tree(entry)

    def _load(self, entry: Path) -> Layer | None:
        try:
            meta = json.loads((entry / "meta.json").read_text())
            return Layer(**meta, tree=entry / "tree")
        except (OSError, ValueError, TypeError):
            return None

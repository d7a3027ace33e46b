"""Where dependency layers live: ``$FARM_HOME/layers/<key>/{tree,meta.json}``.

Callers: ``farm.layers.flow`` (find a layer, keep a new one), ``farm.runner`` (the
digest is re-checked right before a build mounts a layer) and ``farm.cli``
(``farm gc`` bounds the layers by size and count). A layer is written once, by farm,
from the target tree of a clean observed dependency build (``keep``), into a temporary
directory renamed into place; nothing ever writes it afterwards. Builds see it only as
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
from farm.snapshot import remove_tree

#: Key material format: bump when what goes into a key changes.
KEY_VERSION = 1


@dataclass(frozen=True)
class Layer:
    """One stored layer. ``digest`` covers every path, mode and content of ``tree``."""

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
    """(sha256 digest, bytes, entries) of the tree at ``root``, following no link."""
    h = hashlib.sha256()
    size = count = 0
    seen: set[int] = set()  # cargo hard-links uplifted files: their bytes count once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(Path(dirpath, d))]):
            path = Path(dirpath, name)
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            count += 1
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode() + b"\0")
            elif stat.S_ISREG(st.st_mode):
                size += 0 if st.st_ino in seen else st.st_size
                seen.add(st.st_ino)
                h.update(_file_sha(path) + b"\0")
    return "sha256:" + h.hexdigest(), size, count


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

        Raises InfrastructureError if the copy fails (the half-made copy is removed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".new-{built_by}"
        remove_tree(tmp)
        tmp.mkdir(mode=0o700)
        # -a: links stay links (never followed), hard links stay shared, mtimes kept:
        # cargo's fingerprints compare them.
        done = subprocess.run(
            ["cp", "-a", "--reflink=auto", f"{target}/.", str(tmp / "tree")],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            remove_tree(tmp)
            raise InfrastructureError(f"could not keep the dependency layer: {done.stderr}")
        digest, size, files = tree_digest(tmp / "tree")
        layer = Layer(
            key, tenant, digest, size, files, built_by, time.time(), self._dir(key) / "tree"
        )
        meta = {k: v for k, v in asdict(layer).items() if k != "tree"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.chmod(tmp, 0o755)  # the tree is read by gVisor's gofer through the overlay
        final = self._dir(key)
        existing = self._load(final)
        if existing is not None:
            # Another dependency build of the same key finished first; builds may have it
            # mounted already, so it is kept and this copy dropped.
            remove_tree(tmp)
            return existing
        remove_tree(final)  # a half-written leftover without meta.json
        os.rename(tmp, final)
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
        total = dropped = freed = 0
        for index, layer in enumerate(self.all()):
            total += layer.size
            if (index >= max_count or total > max_bytes) and not self.in_use(layer):
                self.remove(layer.key)
                dropped, freed = dropped + 1, freed + layer.size
        return dropped, freed

    def _load(self, entry: Path) -> Layer | None:
        try:
            meta = json.loads((entry / "meta.json").read_text())
            return Layer(**meta, tree=entry / "tree")
        except (OSError, ValueError, TypeError):
            return None

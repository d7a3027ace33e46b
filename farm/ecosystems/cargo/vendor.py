"""Cargo in the fetch phase: Cargo.lock's registry packages in, a vendor directory and a
cargo config out. ``Cargo`` is also cargo's whole ``farm.ecosystems.Ecosystem``: its
build-phase and observer methods hand over to ``defaults``, ``toolchain``, ``hints`` and
``attribution`` beside this module (imported when first asked, so the fetch phase does
not load the observer's rules and the other way round).

Callers: ``farm.fetch.phase``, ``farm.runner``, ``farm.k8s`` and ``farm.observe`` through
``farm.ecosystems``. The result is a cargo
*directory source* (``vendor/{name}-{version}/`` with ``.cargo-checksum.json`` listing
every file and the package's checksum), which any cargo reads, old or new, sparse-aware or
not. The config replaces crates.io (and any other registry the lock names) with it; the
build sandbox mounts it over ``/.cargo/config.toml`` because cargo reads that file for any
working directory and farm's images already use that path (farm.k8s.objects VENDOR_CONFIG).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from farm.confine import FILE_FLAGS, open_beneath
from farm.ecosystems import BuildMount, Package
from farm.ecosystems.cargo import cratefile
from farm.ecosystems.cargo.gitpackage import git_package_files
from farm.ecosystems.cargo.lockfile import MAX_LOCK_BYTES, Lockfile, read_lock
from farm.errors import LockfileError
from farm.fetch.git import Checkout, GitSource

if TYPE_CHECKING:
    from farm.observe.processes import Attributor

#: Where the build sandbox sees the vendored crates and their source replacement.
VENDOR_DIR = "/vendor"
CONFIG_TARGET = "/.cargo/config.toml"
CRATES_IO_SOURCE = "registry+https://github.com/rust-lang/crates.io-index"
_VENDOR_SOURCE = "farm-vendor"
#: The mtime of every vendored file and directory: 1980-01-01 (the zip epoch, so a tool
#: that packs sources never meets a time it cannot store), always older than any build.
VENDOR_MTIME = 315532800

NO_LOCK = (
    "the project has no Cargo.lock, and the fetch phase downloads exactly what a lock names: "
    "run `cargo generate-lockfile` in it and commit Cargo.lock, or have farm resolve one "
    "against a farm mirror: `farm build --resolve-lock MIRROR_DIR` locally, `--resolve-lock` "
    "through a farm serve started with --resolve-mirror (a cluster Build uses the lock it "
    "is given)"
)


class Cargo:
    name = "cargo"
    marker = "Cargo.toml"

    def __init__(self) -> None:
        #: The lock ``packages`` read, for checks that depend on it (its version against
        #: the image's cargo: the ``inspect`` hook of ``farm.fetch.phase.fetch``).
        self.lock: Lockfile | None = None

    def detect(self, source_fd: int) -> bool:
        return _regular(source_fd, "Cargo.toml")

    def packages(self, source_fd: int) -> list[Package]:
        text = _read_lock(source_fd)
        lock = self.lock = read_lock(text)
        out = []
        for p in lock.packages:
            if p.is_git:
                git = GitSource.parse(p.source or "", str(p))
                out.append(Package(p.name, p.version, None, p.source or "", git))
                continue
            if not p.is_registry:
                continue
            if p.checksum is None:
                raise LockfileError(
                    f"{p}: Cargo.lock has no checksum for it; regenerate the lock "
                    "(`cargo generate-lockfile`) so every registry package has one"
                )
            out.append(Package(p.name, p.version, p.checksum, p.source or ""))
        _refuse_collisions(out)
        return out

    def vendor(self, package: Package, data: bytes, dest: Path) -> int:
        root = dest / "vendor"
        root.mkdir(mode=0o755, exist_ok=True)
        crate = cratefile.open_crate(data, package.name, package.version)
        sums = cratefile.write_crate(crate, root / f"{package.name}-{package.version}")
        _write_checksums(root / f"{package.name}-{package.version}", sums, package.checksum)
        settle_mtimes(root / f"{package.name}-{package.version}")
        return sum(len(m.data) for m in crate.members)

    def vendor_git(self, package: Package, checkout: Checkout, dest: Path) -> int:
        assert package.git is not None
        members = git_package_files(package, checkout)
        root = dest / "vendor"
        root.mkdir(mode=0o755, exist_ok=True)
        crate = cratefile.Crate(top=f"{package.name}-{package.version}", members=members)
        sums = cratefile.write_crate(crate, root / crate.top)
        _write_checksums(root / crate.top, sums, None)
        settle_mtimes(root / crate.top)
        return sum(len(m.data) for m in members)

    def finish(self, packages: list[Package], dest: Path) -> list[BuildMount]:
        (dest / "vendor").mkdir(mode=0o755, exist_ok=True)
        config = dest / "cargo-config.toml"
        config.write_text(cargo_config(packages))
        config.chmod(0o644)
        return [BuildMount(dest / "vendor", VENDOR_DIR), BuildMount(config, CONFIG_TARGET)]

    def default_argv(self) -> list[str]:
        from farm.ecosystems.cargo.defaults import DEFAULT_ARGV

        return list(DEFAULT_ARGV)

    def default_outputs(self, source: Path, within: Path | None) -> list[str]:
        from farm.ecosystems.cargo.defaults import binary_outputs

        return binary_outputs(source, within)

    def check_toolchain(
        self, source: Path, image: str, labels: dict[str, str] | None, within: Path | None
    ) -> list[str]:
        from farm.ecosystems.cargo import toolchain

        return toolchain.check(source, image, labels, within)

    def failure_hint(self, log_tail: list[str]) -> str | None:
        from farm.ecosystems.cargo.hints import missing_crate_hint

        return missing_crate_hint(log_tail)

    def layer_skeleton(self, source: Path, within: Path | None) -> dict[str, bytes]:
        from farm.ecosystems.cargo.skeleton import plan

        return plan(source, within)

    def check_layer_argv(self, argv: list[str]) -> None:
        from farm.ecosystems.cargo.buildflags import parse

        parse(argv)

    def layer_argv(self, files: dict[str, bytes], argv: list[str]) -> list[str]:
        from farm.ecosystems.cargo.skeleton import dependency_argv

        return dependency_argv(files, argv)

    def lock_versions(self, source: Path) -> dict[str, str]:
        from farm.ecosystems.cargo.attribution import lock_versions

        return lock_versions(source)

    def attributor(self, versions: dict[str, str]) -> Attributor:
        from farm.ecosystems.cargo.attribution import CargoAttributor

        return CargoAttributor(versions)


def cargo_config(packages: list[Package]) -> str:
    """Source replacement of crates.io, and of every other registry the lock names, by
    the vendor directory."""
    lines = [
        "# Written by farm's fetch phase: every registry crate comes from /vendor.",
        "[source.crates-io]",
        f'replace-with = "{_VENDOR_SOURCE}"',
        "",
        f"[source.{_VENDOR_SOURCE}]",
        f'directory = "{VENDOR_DIR}"',
    ]
    registries = {p.source for p in packages if p.git is None}
    others = sorted(registries - {CRATES_IO_SOURCE})
    for i, source in enumerate(others, 1):
        url = source.removeprefix("registry+")
        lines += ["", f"[source.farm-registry-{i}]", f"registry = {json.dumps(url)}"]
        lines.append(f'replace-with = "{_VENDOR_SOURCE}"')
    gits = sorted({(p.git.url, p.git.query) for p in packages if p.git is not None})
    for i, (url, query) in enumerate(gits, 1):
        # cargo matches a replacement by URL and reference, exactly as the lock spells them.
        lines += ["", f"[source.farm-git-{i}]", f"git = {json.dumps(url)}"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in query]
        lines.append(f'replace-with = "{_VENDOR_SOURCE}"')
    return "\n".join(lines) + "\n"


def settle_mtimes(crate_dir: Path) -> None:
    """Give every entry of a vendored package the same fixed mtime, ``VENDOR_MTIME``.

    A package's files are fixed by its checksum (or commit), so their time carries no
    information; a fresh one (each fetch phase unpacks anew) would make every build
    script that declares ``rerun-if-changed`` on its own files look stale to cargo,
    rerun, and recompile its crate and everything above it, in a build that starts from
    a dependency layer (farm.layers) whose units are otherwise fresh. Deepest first, so
    setting a file's time never follows its directory's."""
    for top, dirs, names in os.walk(crate_dir, topdown=False):
        for name in [*names, *dirs]:
            os.utime(os.path.join(top, name), (VENDOR_MTIME, VENDOR_MTIME), follow_symlinks=False)
    os.utime(crate_dir, (VENDOR_MTIME, VENDOR_MTIME), follow_symlinks=False)


def _write_checksums(crate_dir: Path, sums: dict[str, str], package: str | None) -> None:
    body = json.dumps({"files": sums, "package": package}, sort_keys=True)
    fd = os.open(
        crate_dir / cratefile.CHECKSUM_FILE,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o644,
    )
    with os.fdopen(fd, "w") as fh:
        fh.write(body)


def _refuse_collisions(packages: list[Package]) -> None:
    seen: dict[str, Package] = {}
    for p in packages:
        key = f"{p.name}-{p.version}"
        if key in seen:
            raise LockfileError(
                f"{p}: locked from two registries ({seen[key].source} and {p.source}); "
                "one vendor directory cannot hold both, so keep one of them in Cargo.toml"
            )
        seen[key] = p


def _regular(dir_fd: int, name: str) -> bool:
    try:
        fd = open_beneath(dir_fd, (name,), FILE_FLAGS)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def _read_lock(dir_fd: int) -> bytes:
    """Cargo.lock, never through a link and never more than the lock cap."""
    try:
        fd = open_beneath(dir_fd, ("Cargo.lock",), FILE_FLAGS)
    except FileNotFoundError:
        raise LockfileError(NO_LOCK) from None
    except OSError as exc:
        raise LockfileError(f"Cargo.lock: cannot open it ({exc.strerror}); {NO_LOCK}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise LockfileError(f"Cargo.lock is not a regular file; {NO_LOCK}")
        return fh.read(MAX_LOCK_BYTES + 1)

"""Language ecosystems (cargo today; npm and pip later) behind one small protocol.

Callers: ``farm.fetch.phase`` (which packages a source locks, how to vendor them) and, via
the fetch result's mounts, ``farm.runner``. The sandbox, the policy and the runner never
name an ecosystem: adding npm means one more module here that implements ``Ecosystem``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from farm.fetch.git import Checkout, GitSource


@dataclass(frozen=True)
class Package:
    """One locked package. A registry package is downloaded by name and version and
    checked against ``checksum`` (sha256 hex of the archive, as the lockfile states it);
    a git package (``git`` set, ``checksum`` None) is fetched by its full commit id."""

    name: str
    version: str
    checksum: str | None
    #: The lockfile's source id (``registry+https://github.com/rust-lang/crates.io-index``).
    source: str
    git: GitSource | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class BuildMount:
    """A read-only file or directory of the fetch result, at ``target`` in the sandbox."""

    source: Path
    target: str


class Ecosystem(Protocol):
    """What the fetch phase needs to know about one package manager. Implementations run
    no third-party code: they read lockfiles and unpack archives, nothing else."""

    name: str

    def detect(self, source_fd: int) -> bool:
        """Whether the source (a directory descriptor) is a project of this ecosystem."""

    def packages(self, source_fd: int) -> list[Package]:
        """The packages to download, from the source's lockfile. Raises FetchError
        (LockfileError when there is no usable lockfile, saying how to make one)."""

    def vendor(self, package: Package, data: bytes, dest: Path) -> int:
        """Unpack one verified archive below ``dest``; returns the bytes written.
        Raises CrateRejectedError for a malformed archive."""

    def vendor_git(self, package: Package, checkout: Checkout, dest: Path) -> int:
        """Vendor a git package from its fetched commit below ``dest``; returns the bytes
        written. Raises FetchError when the package cannot be vendored as it is."""

    def finish(self, packages: list[Package], dest: Path) -> list[BuildMount]:
        """Write whatever config points the build's package manager at ``dest``; return
        what the build sandbox must mount (read-only)."""


def ecosystems() -> list[Ecosystem]:
    """Every ecosystem farm knows, in the order they are tried."""
    from farm.ecosystems.cargo.vendor import Cargo

    return [Cargo()]

"""Language ecosystems (cargo today; npm and pip later) behind one small protocol.

Callers: ``farm.fetch.phase`` (which packages a source locks, how to vendor them);
``farm.runner`` and ``farm.k8s`` (a source's default argv and outputs, the image's
toolchain check, the hint for a failed build: :func:`detect`, :func:`default`);
``farm.observe.processes`` (who a process is: :func:`attributors`) and the runner's
observation step (:func:`lock_versions`). The sandbox, the policy, the runner and the
observer never name an ecosystem: adding npm means one more package here whose class
implements ``Ecosystem``, listed in :func:`ecosystems` (or added with :func:`registered`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from farm.fetch.git import Checkout, GitSource
    from farm.observe.processes import Attributor


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


class NoLayer(Exception):
    """The project cannot have a dependency layer (farm.layers); the message says why."""


@runtime_checkable
class ImageLabels(Protocol):
    """A backend that can read an image's labels (farm.backends.local), for an
    ecosystem's toolchain check."""

    def image_labels(self, image: str) -> dict[str, str] | None: ...


class Ecosystem(Protocol):
    """What farm needs to know about one package manager. Implementations run no
    third-party code: they read manifests and lockfiles and unpack archives, nothing else.
    The tree is untrusted: every read goes beneath the source without following a link."""

    name: str
    #: The file that makes a directory a project of this ecosystem (``Cargo.toml``).
    marker: str

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

    # -- the build phase: what farm fills in and checks before the sandbox exists --

    def default_argv(self) -> list[str]:
        """The build command of a project that names none (offline, locked)."""

    def default_outputs(self, source: Path, within: Path | None) -> list[str]:
        """Output globs of the project at ``source`` (opened beneath ``within``).
        Raises SpecError when its manifests cannot be read."""

    def check_toolchain(
        self, source: Path, image: str, labels: dict[str, str] | None, within: Path | None
    ) -> list[str]:
        """Notes for the record; raises SpecError for a project the image's toolchain
        (its ``labels``; None: unknown) cannot build."""

    def failure_hint(self, log_tail: list[str]) -> str | None:
        """The fix for a failed build without a fetch phase, read from its log's tail
        (the build's own output: only ever worded as a hint)."""

    # -- dependency layers (farm.layers): the project's dependencies built alone --

    def layer_skeleton(self, source: Path, within: Path | None) -> dict[str, bytes]:
        """The files of a project with the same dependencies and none of its own code
        (relative path -> content), from its parsed manifests. Raises NoLayer."""

    def check_layer_argv(self, argv: list[str]) -> None:
        """Raises NoLayer for a build command no dependency layer can serve, from
        ``argv`` alone: cheap, so ``farm.layers.flow`` asks before planning a skeleton."""

    def layer_argv(self, files: dict[str, bytes], argv: list[str]) -> list[str]:
        """The command that builds ``files``' dependencies as the project's own command
        ``argv`` would (the same selection of features, binaries, packages) and leaves
        none of the stubs' own outputs in the target tree. Raises NoLayer for an
        ``argv`` whose dependency build it cannot reproduce."""

    # -- the observer: who a process of the build is --

    def lock_versions(self, source: Path) -> dict[str, str]:
        """Package name -> version from the lockfile in ``source`` (farm's snapshot),
        where the name is unambiguous; {} without a usable one."""

    def attributor(self, versions: dict[str, str]) -> Attributor:
        """The rules that name the package a process of the build works for
        (``farm.observe.processes.Attributor``); ``versions`` from lock_versions."""


#: Ecosystems added by :func:`registered` (tried after farm's own).
_REGISTERED: list[Callable[[], Ecosystem]] = []


def ecosystems() -> list[Ecosystem]:
    """Every ecosystem farm knows, in the order they are tried (new instances: an
    ecosystem may keep what one fetch read)."""
    from farm.ecosystems.cargo.vendor import Cargo

    return [Cargo(), *(make() for make in list(_REGISTERED))]


@contextmanager
def registered(make: Callable[[], Ecosystem]) -> Iterator[None]:
    """While the block runs, ``make()``'s ecosystem is known too (after farm's own)."""
    _REGISTERED.append(make)
    try:
        yield
    finally:
        _REGISTERED.remove(make)


def default() -> Ecosystem:
    """The ecosystem of a source farm cannot look at: a cluster Build's tree is cloned
    inside its pod, so the controller fills a missing argv from this one."""
    return ecosystems()[0]


def detect(source: Path, within: Path | None = None, *, strict: bool = False) -> Ecosystem | None:
    """The first ecosystem whose project ``source`` is (opened beneath ``within``,
    following no link); None for none. A source that cannot be opened is None too, or
    with ``strict`` a SpecError saying so."""
    from farm.confine import Outside, open_dir
    from farm.errors import SpecError

    try:
        fd = open_dir(source, within)
    except (Outside, OSError) as exc:
        if strict:
            raise SpecError([f"source: cannot open {source}: {exc}"]) from None
        return None
    try:
        return next((e for e in ecosystems() if e.detect(fd)), None)
    finally:
        os.close(fd)


def markers() -> str:
    """``Cargo.toml`` (or ``Cargo.toml or package.json``), for a message."""
    return " or ".join(e.marker for e in ecosystems())


def lock_versions(source: Path) -> dict[str, str]:
    """Every ecosystem's :meth:`Ecosystem.lock_versions` of ``source``, merged."""
    versions: dict[str, str] = {}
    for ecosystem in ecosystems():
        versions.update(ecosystem.lock_versions(source))
    return versions


def attributors(versions: dict[str, str]) -> list[Attributor]:
    """Each ecosystem's attribution rules, in order (farm.observe.processes)."""
    return [e.attributor(versions) for e in ecosystems()]

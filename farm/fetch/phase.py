"""Run the fetch phase: download every locked package, verify it, vendor it.

Callers: ``farm.runner`` (local builds, before the sandbox; the result is mounted
read-only), ``farm fetch SRC --dest DIR`` (the cluster's fetch Job runs the same code).
Only farm's own Python runs here: lockfiles are parsed, archives are checked and
unpacked, nothing from a package is executed. The network is the registry client's,
which talks only to the configured registry's hosts (farm.fetch.registry).

A package's bytes are used only after their sha256 equals the lockfile's checksum;
only then are they stored in the shared cache, so what the cache serves to another
tenant is exactly what that tenant's own lock names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from farm.confine import Outside, open_dir
from farm.ecosystems import BuildMount, Ecosystem, Package, ecosystems
from farm.errors import ChecksumMismatchError, FetchError, InputError
from farm.fetch.cache import CrateCache
from farm.fetch.git import Checkout, fetch_commit
from farm.fetch.registry import HttpCaps, Registry, RegistryClient
from farm.records import FetchedPackage

#: Bytes the vendored packages may hold in all, unless the caller says otherwise.
DEFAULT_MAX_BYTES = 8 << 30


class FetchResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    dest: Path
    packages: list[FetchedPackage]
    mounts: list[tuple[Path, str]]

    def build_mounts(self) -> list[BuildMount]:
        return [BuildMount(source, target) for source, target in self.mounts]


def fetch(
    source: Path,
    dest: Path,
    registry: Registry,
    cache: CrateCache,
    *,
    within: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    caps: HttpCaps | None = None,
    inspect: Callable[[Ecosystem], None] | None = None,
    say: Callable[[str], None] | None = None,
    kinds: Sequence[Ecosystem] | None = None,
    git_hosts: frozenset[str] = frozenset(),
) -> FetchResult:
    """Vendor the locked dependencies of ``source`` into ``dest`` (created; must not
    exist). ``inspect`` sees each detected ecosystem after its lock was read and before
    anything is downloaded (the toolchain check hooks in there). ``kinds``: the
    ecosystems to try (default: every one farm knows, ``farm.ecosystems.ecosystems``).
    ``git_hosts``: the hosts git dependencies may be fetched from (the operator's).

    Raises FetchError (LockfileError, PackageMissingError, ChecksumMismatchError,
    CrateRejectedError, RegistryUnreachableError) naming the package and the fix.
    """
    try:
        source_fd = open_dir(source, within)
    except (Outside, OSError) as exc:
        raise InputError(f"source: cannot open {source}: {exc}") from None
    try:
        tried = ecosystems() if kinds is None else kinds
        plans = [(eco, eco.packages(source_fd)) for eco in tried if eco.detect(source_fd)]
    finally:
        os.close(source_fd)
    for eco, _ in plans:
        if inspect:
            inspect(eco)
    dest.mkdir(mode=0o755)
    client = RegistryClient(registry, caps)
    fetched: list[FetchedPackage] = []
    mounts: list[tuple[Path, str]] = []
    written = 0
    with _Checkouts(git_hosts) as checkouts:
        for eco, packages in plans:
            for package in packages:
                if package.git is not None:
                    checkout = checkouts.get(package)
                    written += eco.vendor_git(package, checkout, dest)
                    fetched.append(_fetched(eco, package, registry, cached=False))
                else:
                    data, cached = _obtain(package, client, cache, say)
                    written += eco.vendor(package, data, dest)
                    fetched.append(_fetched(eco, package, registry, cached))
                if written > max_bytes:
                    raise FetchError(
                        f"{package}: the vendored dependencies pass {max_bytes} bytes; "
                        "raise resources.disk (--disk) if the project really needs them"
                    )
            mounts += [(m.source, m.target) for m in eco.finish(packages, dest)]
    return FetchResult(dest=dest, packages=fetched, mounts=mounts)


class _Checkouts:
    """Each repository commit fetched once per phase, however many packages it holds."""

    def __init__(self, hosts: frozenset[str]) -> None:
        self.hosts = hosts
        self.open: dict[tuple[str, str], Checkout] = {}

    def __enter__(self) -> _Checkouts:
        return self

    def __exit__(self, *exc: object) -> None:
        for checkout in self.open.values():
            checkout.__exit__()

    def get(self, package: Package) -> Checkout:
        git = package.git
        assert git is not None
        key = (git.url, git.commit)
        if key not in self.open:
            self.open[key] = fetch_commit(git, self.hosts, str(package))
        return self.open[key]


def _obtain(
    package: Package,
    client: RegistryClient,
    cache: CrateCache,
    say: Callable[[str], None] | None,
) -> tuple[bytes, bool]:
    assert package.checksum is not None  # a registry package always has one (lockfile)
    data = cache.get(package.checksum)
    if data is not None:
        return data, True
    if say:
        say(f"fetching {package} from {client.registry.name}")
    data = client.download(package.name, package.version, package.checksum)
    got = hashlib.sha256(data).hexdigest()
    if got != package.checksum:
        raise ChecksumMismatchError(
            f"{package}: checksum mismatch (lock {package.checksum[:4]}…, registry {got[:4]}…); "
            f"refusing to build\n  lock:     {package.checksum}\n  registry: {got} "
            f"({client.registry.name}, {client.registry.index})\n"
            "The registry serves other bytes than Cargo.lock names: fix the registry (or "
            "mirror), or update the lock if the change is intended."
        )
    cache.put(package.checksum, data)
    return data, False


def _fetched(eco: Ecosystem, package: Package, registry: Registry, cached: bool) -> FetchedPackage:
    return FetchedPackage(
        ecosystem=eco.name,
        name=package.name,
        version=package.version,
        sha256=package.checksum,
        commit=package.git.commit if package.git else None,
        source=package.source,
        registry=registry.name,
        index=registry.index,
        cached=cached,
    )

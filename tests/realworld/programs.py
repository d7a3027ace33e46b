"""The realworld corpus: Rust programs Debian ships, their sources as Debian ships them, and
a loopback mirror of the Debian-derived crates each one needs (docs/realworld.md).

Callers: tests/realworld/test_programs.py (and `make realworld`, which runs all of them).
Everything here is setup code: it reads Debian's signed archive (farm.mirror.debarchive)
into a cache directory, and never runs third-party code. Applying Debian's patches runs GNU
patch on the host on Debian's own, signature-checked files, with an empty environment.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from farm.ecosystems.cargo.cratefile import unpack
from farm.mirror.debarchive import DebianArchive, DebianLookupError, Pinned, _unxz
from farm.mirror.debian_binary import DerivedCrate, add_program
from farm.mirror.store import Mirror

#: The cargo command each build runs (farm's default plus the program's own flags).
CARGO = ("cargo", "build", "--release", "--locked", "--offline")


@dataclass(frozen=True)
class Program:
    """One corpus entry. ``origin``: ``librust`` takes the source from Debian's
    librust-<name>-dev (the crate as Debian patched it); ``pool`` takes Debian's orig
    tarball and applies debian/patches/series from its debian.tar.xz."""

    name: str
    version: str
    suite: str
    binary: str
    origin: str
    cargo_args: tuple[str, ...] = ()
    #: Lines dropped from the root Cargo.toml: features that name a feature Debian's
    #: patched dependency no longer has (cargo resolves a lock with every feature on).
    drop_lines: tuple[str, ...] = ()
    #: More librust packages for the mirror: dev-dependencies Debian's Build-Depends
    #: leave out (its builds skip those tests), which cargo still resolves.
    extra_debs: tuple[str, ...] = ()
    image: str = "farm/rust:bookworm"
    why: str = ""
    #: A known upstream cause of unreproducible output, as (why, a name diffoscope's
    #: report must show when `--check 2` finds a difference): such a program may come
    #: out either way, and a difference must be that one.
    unreproducible: tuple[str, str] | None = None

    @property
    def argv(self) -> list[str]:
        return [*CARGO, "--bin", self.binary, *self.cargo_args]

    @property
    def id(self) -> str:
        suffix = "" if self.suite == "bookworm" else f"-{self.suite}"
        return f"{self.name}-{self.version}{suffix}"


#: The program a plain `pytest` (CI) builds too: the quickest to build, and its
#: `--check 2` has been reproducible (hexyl's once was not: docs/realworld.md).
CI_PROGRAM = "exa"
#: Smallest source first.
CORPUS = [
    Program("hexyl", "0.8.0", "bookworm", "hexyl", "librust", why="22 KB, clap 2"),
    Program(
        "ripgrep",
        "13.0.0",
        "bookworm",
        "rg",
        "pool",
        drop_lines=('simd-accel = ["grep/simd-accel"]',),
        why="Debian drops jemallocator; farm drops simd-accel (Debian's grep has no such feature)",
        unreproducible=(
            "unicode-linebreak 0.1.4's build script generates its tables with hashbrown's "
            "randomly seeded ahash, so their layout can change from build to build "
            "(unicode-linebreak 0.1.5 ships pre-generated tables; Debian bookworm has 0.1.4)",
            "unicode_linebreak",
        ),
    ),
    Program(
        "fd-find",
        "8.6.0",
        "bookworm",
        "fd",
        "pool",
        extra_debs=(
            "librust-diff-dev",
            "librust-filetime-dev",
            "librust-tempfile-dev",
            "librust-test-case-dev",
        ),
        why="Debian drops jemallocator, relaxes deps; its test-only deps added",
    ),
    Program(
        "exa",
        "0.10.1",
        "bookworm",
        "exa",
        "pool",
        ("--no-default-features",),
        why="without the git feature (libgit2 is a C library); the CI program",
    ),
    Program(
        "cbindgen", "0.24.3", "bookworm", "cbindgen", "librust", why="serde, syn, toml, clap 3"
    ),
    Program(
        "hexyl",
        "0.8.0",
        "trixie",
        "hexyl",
        "librust",
        image="farm/rust:trixie",
        why="trixie's crates on rustc 1.85 (rustix 0.38.37's long cfg keys)",
    ),
]


def cache_dir() -> Path:
    """Downloads are kept here between runs (every use re-verifies their sha256)."""
    env = os.environ.get("FARM_REALWORLD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "farm-realworld"


def archive() -> DebianArchive:
    return DebianArchive(cache_dir() / "debian")


def fill_mirror(program: Program, path: Path) -> tuple[Mirror, list[DerivedCrate]]:
    mirror = Mirror(path).create()
    return mirror, add_program(mirror, archive(), program.suite, program.name, program.extra_debs)


def program_source(program: Program, mirror: Mirror, dest: Path) -> Path:
    """The program's source tree at ``dest`` (created), as Debian ships it."""
    if program.origin == "librust":
        crate = mirror.crate_path(program.name, program.version).read_bytes()
        unpack(crate, dest)
    else:
        _from_pool(program, dest)
    if program.drop_lines:
        manifest = dest / "Cargo.toml"
        lines = manifest.read_text().split("\n")
        kept = [line for line in lines if line.strip() not in program.drop_lines]
        assert len(lines) - len(kept) == len(program.drop_lines), "corpus edit no longer applies"
        manifest.write_text("\n".join(kept))
    return dest


def _from_pool(program: Program, dest: Path) -> None:
    arch = archive()
    stanzas = [
        s
        for s in arch.index(program.suite, "Sources")
        if s.get("Package") == f"rust-{program.name}"
        and s.get("Version", "").startswith(program.version + "-")
    ]
    if not stanzas:
        raise DebianLookupError(f"{program.suite} has no rust-{program.name} {program.version}")
    stanza = stanzas[-1]
    files = {}
    for line in stanza.get("Checksums-Sha256", "").split("\n"):
        if not line.strip():
            continue
        sha, size, name = line.split()
        files[name] = Pinned(f"{stanza['Directory']}/{name}", int(size), sha)
    orig = next(p for n, p in files.items() if ".orig.tar." in n)
    debian = next(p for n, p in files.items() if n.endswith(".debian.tar.xz"))
    _extract(arch.fetch(orig), dest, strip=1)
    _extract(
        _unxz(arch.fetch(debian), 64 << 20, debian.path), dest, strip=0, only="debian/patches/"
    )
    series = dest / "debian/patches/series"
    for patch in series.read_text().split("\n") if series.is_file() else []:
        name = patch.split("#")[0].strip()
        if name:
            subprocess.run(
                [
                    "patch",
                    "-p1",
                    "--batch",
                    "--forward",
                    "--no-backup-if-mismatch",
                    "-i",
                    f"debian/patches/{name}",
                ],
                cwd=dest,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                check=True,
                capture_output=True,
            )
    shutil.rmtree(dest / "debian")


def _extract(data: bytes, dest: Path, *, strip: int, only: str = "") -> None:
    """Regular files and directories only (tarfile's ``data`` filter refuses the rest)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts[strip:]
            if (
                not parts
                or not "/".join(parts).startswith(only)
                or not (member.isfile() or member.isdir())
            ):
                continue
            member.name = "/".join(parts)
            tar.extract(member, dest, filter="data")

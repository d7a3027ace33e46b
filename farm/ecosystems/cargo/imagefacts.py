"""What a builder image's Rust toolchain can do, as image labels.

Callers: ``farm.images`` labels the rust and fetch images at build time with
``labels_of_rootfs`` (read from the rootfs tarball's dpkg status, never assumed from the
suite); ``farm.ecosystems.cargo.toolchain`` reads them back with ``ImageFacts.of_labels``
to check a project against the image before anything is created. An image without the
labels (a user's own) has no facts: the checks are skipped with a note, never guessed.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from farm.errors import ImageError

PREFIX = "io.farm."
#: (label, field): the label names farm puts on its toolchain images.
LABELS = {
    "rustc": "io.farm.rustc",
    "cargo": "io.farm.cargo",
    "lockfile_versions": "io.farm.cargo.lockfile-versions",
    "editions": "io.farm.rust.editions",
    "components": "io.farm.rust.components",
    "targets": "io.farm.rust.targets",
}
#: Informational labels: the Debian package versions the numbers above come from.
PACKAGE_LABELS = {"rustc_package": "io.farm.rustc.debian", "cargo_package": "io.farm.cargo.debian"}
#: Cargo.lock versions and their first cargo (v1/v2 are read by every cargo farm knows).
LOCKFILE_SINCE = {1: "1.0.0", 2: "1.41.0", 3: "1.47.0", 4: "1.78.0"}
#: Editions and the first rustc (and cargo) that accepts them.
EDITION_SINCE = {"2015": "1.0.0", "2018": "1.31.0", "2021": "1.56.0", "2024": "1.85.0"}
#: Debian package -> the rustup component it provides.
COMPONENTS = {
    "rustc": "rustc",
    "cargo": "cargo",
    "libstd-rust-dev": "rust-std",
    "rustfmt": "rustfmt",
    "rust-clippy": "clippy",
    "rust-src": "rust-src",
    "rust-analyzer": "rust-analyzer",
    "rust-doc": "rust-docs",
}
#: dpkg architecture -> the Rust target libstd-rust-dev is built for.
TARGETS = {
    "amd64": "x86_64-unknown-linux-gnu",
    "arm64": "aarch64-unknown-linux-gnu",
    "armhf": "armv7-unknown-linux-gnueabihf",
    "i386": "i686-unknown-linux-gnu",
    "ppc64el": "powerpc64le-unknown-linux-gnu",
    "riscv64": "riscv64gc-unknown-linux-gnu",
    "s390x": "s390x-unknown-linux-gnu",
}
#: Extra Debian std packages -> their targets.
EXTRA_TARGETS = {
    "libstd-rust-dev-wasm32": "wasm32-unknown-unknown",
    "libstd-rust-dev-windows": "x86_64-pc-windows-gnu",
}
_VERSION = re.compile(r"^(?:\d+:)?(\d+)\.(\d+)(?:\.(\d+))?")
#: The dpkg status of a rootfs this size is not a status file.
MAX_STATUS = 64 << 20

Version = tuple[int, int, int]


def parse_version(text: str) -> Version | None:
    """``1.85``, ``1.85.1`` or a Debian version (``1.85.1+dfsg1-1``) as a triple."""
    match = _VERSION.match(text.strip())
    if not match:
        return None
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def show(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


class ImageFacts(BaseModel):
    """An image's toolchain: versions are Rust release numbers (cargo's too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str
    rustc: str
    cargo: str
    lockfile_versions: tuple[int, ...]
    editions: tuple[str, ...]
    components: tuple[str, ...]
    targets: tuple[str, ...]
    #: Debian's versions (cargo 0.66.0+ds1-1 is Rust 1.65's cargo); "" when unknown.
    rustc_package: str = ""
    cargo_package: str = ""

    @property
    def rustc_version(self) -> Version:
        return parse_version(self.rustc) or (0, 0, 0)

    @property
    def cargo_version(self) -> Version:
        return parse_version(self.cargo) or (0, 0, 0)

    @classmethod
    def of_labels(cls, image: str, labels: dict[str, str] | None) -> ImageFacts | None:
        """The facts of an image labelled by farm; None when a label is missing or is not
        what farm writes (an image's labels are its author's: never guessed from)."""
        labels = labels or {}
        if not all(name in labels for name in LABELS.values()):
            return None
        raw = {field: labels[name] for field, name in LABELS.items()}
        if not all(parse_version(raw[f]) for f in ("rustc", "cargo")):
            return None
        try:
            versions = tuple(int(v) for v in _words(raw["lockfile_versions"]))
        except ValueError:
            return None
        return cls(
            image=image,
            rustc=raw["rustc"],
            cargo=raw["cargo"],
            lockfile_versions=versions,
            editions=_words(raw["editions"]),
            components=_words(raw["components"]),
            targets=_words(raw["targets"]),
            **{field: labels.get(name, "") for field, name in PACKAGE_LABELS.items()},
        )

    def labels(self) -> dict[str, str]:
        names = {**LABELS, **PACKAGE_LABELS}
        values = self.model_dump(exclude={"image"})
        return {
            names[field]: v if isinstance(v, str) else ",".join(map(str, v))
            for field, v in values.items()
        }

    def cargo_said(self) -> str:
        """``cargo 1.65.0 (Debian 0.66.0+ds1-1)``: both numbers when Debian's differs."""
        debian = self.cargo_package
        differs = debian and parse_version(debian) != self.cargo_version
        return f"cargo {self.cargo}" + (f" (Debian's cargo {debian})" if differs else "")


def _words(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.split(",") if w)


def facts_of_packages(installed: dict[str, tuple[str, str]], image: str = "") -> ImageFacts:
    """The facts of a rootfs whose dpkg status lists ``installed``: package -> (version,
    architecture). Raises ImageError when rustc or cargo is missing."""
    rustc = _installed_version(installed, "rustc")
    cargo = _installed_version(installed, "cargo")
    if cargo[0] == 0:  # Debian's cargo before 1.0 numbering: cargo 0.N ships with Rust 1.(N-1)
        cargo = (1, cargo[1] - 1, cargo[2])
    targets = [TARGETS[installed["libstd-rust-dev"][1]]] if "libstd-rust-dev" in installed else []
    targets += [t for package, t in EXTRA_TARGETS.items() if package in installed]
    return ImageFacts(
        image=image,
        rustc=show(rustc),
        cargo=show(cargo),
        lockfile_versions=tuple(v for v, since in LOCKFILE_SINCE.items() if _ge(cargo, since)),
        editions=tuple(e for e, since in EDITION_SINCE.items() if _ge(rustc, since)),
        components=tuple(sorted(c for p, c in COMPONENTS.items() if p in installed)),
        targets=tuple(targets),
        rustc_package=installed["rustc"][0],
        cargo_package=installed["cargo"][0],
    )


def _installed_version(installed: dict[str, tuple[str, str]], package: str) -> Version:
    version = parse_version(installed.get(package, ("", ""))[0])
    if version is None:
        raise ImageError(f"the rootfs has no {package} package: not a Rust toolchain image")
    return version


def _ge(version: Version, since: str) -> bool:
    return version >= (parse_version(since) or (0, 0, 0))


def installed_packages(status: str) -> dict[str, tuple[str, str]]:
    """dpkg status text -> {package: (version, architecture)} of installed packages."""
    found = {}
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            found[fields["Package"]] = (fields.get("Version", ""), fields.get("Architecture", ""))
    return found


def labels_of_rootfs(tar: Path) -> dict[str, str]:
    """The toolchain labels of the rootfs tarball farm just built (trusted: mmdebstrap's
    output). Raises ImageError when it holds no dpkg status or no Rust toolchain."""
    with tarfile.open(tar) as archive:
        try:
            member = archive.getmember("./var/lib/dpkg/status")
        except KeyError:
            raise ImageError(f"{tar} has no /var/lib/dpkg/status") from None
        stream = archive.extractfile(member)
        if stream is None or member.size > MAX_STATUS:
            raise ImageError(f"{tar}: /var/lib/dpkg/status is not a bounded regular file")
        status = stream.read().decode()
    return facts_of_packages(installed_packages(status)).labels()

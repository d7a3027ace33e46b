"""Check a cargo project against the builder image's toolchain before anything is created.

Callers: ``farm.runner.Runner.build``, after the image is known to exist and before the
build's record or sandbox exists. The image's facts are its labels
(``farm.ecosystems.cargo.imagefacts``); an image without them is not checked, and the
record says so. What is checked (docs/toolchains.md):

- Cargo.lock's ``version`` against the lockfile versions the image's cargo reads;
- every manifest's ``edition``, ``rust-version`` and ``resolver`` against its rustc/cargo;
- ``rust-toolchain.toml`` / ``rust-toolchain``: farm never downloads a toolchain, so a
  pinned channel is honoured only when the image's rustc satisfies it.

The tree is untrusted and read as root: every file is opened beneath the source's
descriptor without following a link (``farm.confine``) and read up to a bound.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tomllib
from pathlib import Path

from farm import tomlread
from farm.confine import FILE_FLAGS, Outside, open_beneath, open_dir
from farm.ecosystems.cargo import defaults
from farm.ecosystems.cargo.imagefacts import (
    EDITION_SINCE,
    LABELS,
    LOCKFILE_SINCE,
    ImageFacts,
    Version,
    parse_version,
    show,
)
from farm.errors import SpecError

#: farm's own toolchain images and what they hold, only to word the hint of an error
#: (the check itself reads the image's labels; tests/e2e/test_toolchain_images.py holds
#: this table to the labels of the images built here).
FARM_IMAGES = (
    ("farm/rust:bookworm", (1, 63, 0), (1, 65, 0)),
    ("farm/rust:trixie", (1, 85, 1), (1, 85, 1)),
)
#: A Cargo.lock larger than this is refused (the largest in the corpus is ~200 KiB).
MAX_LOCK = 16 << 20
#: rust-toolchain(.toml) is a few lines.
MAX_TOOLCHAIN_FILE = 64 << 10
#: ``resolver = "3"`` is understood from this cargo on.
RESOLVER3_SINCE = (1, 84, 0)
TOOLCHAIN_FILES = ("rust-toolchain", "rust-toolchain.toml")  # rustup's order of preference
_PINNED = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-([a-z0-9_]+(?:-[a-z0-9_]+)+))?$")
NO_DOWNLOAD = (
    "farm does not download toolchains: build an image with it (docs/toolchains.md) or pass --image"
)


def check(
    source: Path, image: str, labels: dict[str, str] | None, within: Path | None
) -> list[str]:
    """Notes for the build's record; raises SpecError listing every way ``source`` needs
    a toolchain ``image`` does not have. Not a cargo project: nothing to check."""
    try:
        fd = open_dir(source, within)
    except (Outside, OSError) as exc:
        raise SpecError([f"source: cannot open {source}: {exc}"]) from None
    try:
        if not _is_file(fd, "Cargo.toml"):
            return []
        facts = ImageFacts.of_labels(image, labels)
        if facts is None:
            return [
                f"image {image} has no toolchain labels ({LABELS['rustc']}… as farm writes "
                "them): farm did not "
                "check Cargo.lock, editions or rust-toolchain.toml against it"
            ]
        notes: list[str] = []
        problems = [
            *_lock_problems(fd, facts, notes),
            *_manifest_problems(fd, facts),
            *_toolchain_problems(fd, facts, notes),
        ]
    finally:
        os.close(fd)
    if problems:
        raise SpecError(problems)
    return notes


def _lock_problems(fd: int, facts: ImageFacts, notes: list[str]) -> list[str]:
    try:
        text = _read(fd, "Cargo.lock", MAX_LOCK)
    except IsADirectoryError:
        notes.append("Cargo.lock is not a regular file: its version was not checked")
        return []
    if text is None:
        return []
    try:
        version = tomlread.loads(text).get("version", 1)
    except tomllib.TOMLDecodeError as exc:
        return [f"Cargo.lock: not TOML ({exc}); regenerate it with `cargo generate-lockfile`"]
    if version in facts.lockfile_versions:
        return []
    since = LOCKFILE_SINCE.get(version) if isinstance(version, int) else None
    if since is None:
        return [
            f"Cargo.lock version {version!r} is not one any cargo farm knows reads; image "
            f"{facts.image} has {facts.cargo_said()} (reads {_versions(facts)})"
        ]
    need = parse_version(since) or (0, 0, 0)
    return [
        f"Cargo.lock version {version} needs cargo ≥ {_short(need)}; image {facts.image} "
        f"has {facts.cargo_said()}; {_hint(facts, cargo=need)}"
    ]


def _short(version: Version) -> str:
    """``1.78`` for 1.78.0: the release a feature arrived in."""
    return show(version[:2] if version[2] == 0 else version)


def _versions(facts: ImageFacts) -> str:
    return ", ".join(f"v{v}" for v in facts.lockfile_versions)


def _manifest_problems(fd: int, facts: ImageFacts) -> list[str]:
    found = defaults.manifests(fd)
    workspace = found[0][1].get("workspace", {}) if found else {}
    inherited = workspace.get("package", {}) if isinstance(workspace, dict) else {}
    problems = []
    for member, manifest in found:
        where = "/".join((*member, "Cargo.toml"))
        package = manifest.get("package", {})
        package = package if isinstance(package, dict) else {}
        problems += _edition(where, _field(package, inherited, "edition"), facts)
        problems += _rust_version(where, _field(package, inherited, "rust-version"), facts)
        resolver = package.get("resolver") or (workspace.get("resolver") if not member else None)
        if str(resolver) == "3" and facts.cargo_version < RESOLVER3_SINCE:
            problems.append(
                f'{where}: resolver = "3" needs cargo ≥ 1.84; image {facts.image} has '
                f"{facts.cargo_said()}; {_hint(facts, cargo=RESOLVER3_SINCE)}"
            )
    return problems


def _field(package: dict, inherited: dict, name: str) -> object:
    """A package field, or the workspace's for ``name.workspace = true``."""
    value = package.get(name)
    if isinstance(value, dict) and value.get("workspace") is True:
        return inherited.get(name)
    return value


def _edition(where: str, edition: object, facts: ImageFacts) -> list[str]:
    if edition is None or str(edition) in facts.editions:
        return []
    since = EDITION_SINCE.get(str(edition))
    if since is None:
        return [f'{where}: edition = "{edition}" is not a Rust edition farm knows']
    need = parse_version(since) or (0, 0, 0)
    return [
        f'{where}: edition = "{edition}" needs rustc ≥ {_short(need)}; image {facts.image} '
        f"has rustc {facts.rustc}; {_hint(facts, rustc=need)}"
    ]


def _rust_version(where: str, value: object, facts: ImageFacts) -> list[str]:
    need = parse_version(str(value)) if isinstance(value, str) else None
    if need is None or need <= facts.rustc_version:
        return []
    return [
        f'{where}: rust-version = "{value}" is above image {facts.image}\'s rustc '
        f"{facts.rustc}; {_hint(facts, rustc=need)}"
    ]


def _toolchain_problems(fd: int, facts: ImageFacts, notes: list[str]) -> list[str]:
    for name in TOOLCHAIN_FILES:
        try:
            text = _read(fd, name, MAX_TOOLCHAIN_FILE)
        except IsADirectoryError:
            return [f"{name}: not a regular file; make it one (rustup reads it as a file)"]
        if text is not None:
            return _pin_problems(name, text, facts, notes)
    return []


def _pin_problems(name: str, text: str, facts: ImageFacts, notes: list[str]) -> list[str]:
    table = _toolchain_table(name, text)
    if isinstance(table, str):
        return [table]
    if "path" in table:
        return [
            f"{name}: a custom toolchain path ({table['path']!r}) is not available; " + NO_DOWNLOAD
        ]
    problems = _channel(name, table.get("channel"), facts, notes)
    for key, have in (("components", facts.components), ("targets", facts.targets)):
        asked = table.get(key, [])
        missing = [str(x) for x in asked if str(x) not in have] if isinstance(asked, list) else []
        if missing:
            problems.append(
                f"{name} asks for {key} {', '.join(missing)}; image {facts.image} has "
                f"{', '.join(have) or 'none'}; {NO_DOWNLOAD}"
            )
    return problems


def _toolchain_table(name: str, text: str) -> dict | str:
    """The [toolchain] table, or a problem. The legacy ``rust-toolchain`` may instead be
    one line naming the channel, as rustup reads it."""
    try:
        table = tomlread.loads(text).get("toolchain")
    except tomllib.TOMLDecodeError as exc:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if name.endswith(".toml") or len(lines) != 1:
            return f"{name}: not TOML ({exc}), nor a single channel line"
        return {"channel": lines[0]}
    if not isinstance(table, dict):
        return f"{name}: expected a [toolchain] table"
    return table


def _channel(name: str, channel: object, facts: ImageFacts, notes: list[str]) -> list[str]:
    if channel is None:
        return []
    channel = str(channel)
    if channel == "stable":
        notes.append(f"{name}: channel stable is the image's rustc {facts.rustc}")
        return []
    match = _PINNED.match(channel)
    if not match:  # beta, nightly, dated channels: not what a Debian rustc is
        return [
            f"{name} asks for channel {channel}; image {facts.image} has stable rustc "
            f"{facts.rustc}; {NO_DOWNLOAD}"
        ]
    if match[4] and match[4] not in facts.targets:
        return [f"{name} pins host {match[4]}; image {facts.image} is {', '.join(facts.targets)}"]
    pinned = (int(match[1]), int(match[2]), int(match[3] or 0))
    have = facts.rustc_version if match[3] else (*facts.rustc_version[:2], 0)
    if pinned > have:
        return [
            f"{name} pins {channel}; image {facts.image} has rustc {facts.rustc}; "
            + _hint(facts, rustc=pinned, otherwise=NO_DOWNLOAD)
        ]
    if pinned < have:
        notes.append(
            f"{name} pins {channel}; built with the image's newer rustc {facts.rustc} "
            "(farm does not download toolchains; docs/toolchains.md)"
        )
    return []


def _hint(
    facts: ImageFacts,
    *,
    rustc: Version = (0, 0, 0),
    cargo: Version = (0, 0, 0),
    otherwise: str = "",
) -> str:
    """``use --image X``: the first of farm's images that has what is needed."""
    for tag, has_rustc, has_cargo in FARM_IMAGES:
        if tag != facts.image and has_rustc >= rustc and has_cargo >= cargo:
            return f"use --image {tag}"
    return otherwise or (
        "no farm image has it; build your own with it (docs/toolchains.md) and pass --image"
    )


def _read(fd: int, name: str, limit: int) -> str | None:
    """The text of regular file ``name`` in the source's root; None if there is none.
    Raises SpecError for a link or a file over ``limit``; IsADirectoryError for anything
    else that is not a regular file."""
    try:
        file_fd = open_beneath(fd, (name,), FILE_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpecError(
                [
                    f"{name} is a symbolic link; farm does not follow links in the source: "
                    "make it a regular file"
                ]
            ) from None
        raise SpecError([f"{name}: cannot open: {exc}"]) from None
    with os.fdopen(file_fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise IsADirectoryError(name)
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise SpecError([f"{name} is larger than {limit} bytes; farm reads no more"])
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise SpecError([f"{name} is not UTF-8 text"]) from None


def _is_file(fd: int, name: str) -> bool:
    try:
        file_fd = open_beneath(fd, (name,), FILE_FLAGS)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(file_fd).st_mode)
    finally:
        os.close(file_fd)

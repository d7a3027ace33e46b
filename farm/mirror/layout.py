"""Names and paths inside a mirror directory, validated before any path is built.

Callers: ``farm.mirror.store`` (writing), ``farm.mirror.serve`` (mapping a request to a
file) and ``farm.mirror.fill``. A name or version that could change a path (``/``,
``..``, NUL, a leading dot) never gets this far: both are checked against cargo's own
character sets first.
"""

from __future__ import annotations

import re

from farm.errors import MirrorError

#: cargo's package names: ASCII letters, digits, ``-`` and ``_``, starting with a letter
#: (crates.io also caps them at 64 characters).
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
#: SemVer: MAJOR.MINOR.PATCH, then optional ``-pre`` and ``+build`` of [0-9A-Za-z.-].
VERSION = re.compile(r"(0|[1-9][0-9]{0,18})(\.(0|[1-9][0-9]{0,18})){2}([-+][0-9A-Za-z.+-]{1,100})?")

INDEX_DIR = "index"
MANIFEST_FILE = "farm-mirror.json"


def check_name(name: str) -> str:
    """Return ``name`` if it is a cargo package name; raises MirrorError otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise MirrorError(
            f"{name!r} is not a crate name (ASCII letters, digits, '-' or '_', "
            "starting with a letter, at most 64 characters)"
        )
    return name


def check_version(name: str, version: str) -> str:
    """Return ``version`` if it is a SemVer version; raises MirrorError otherwise."""
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise MirrorError(f"{name} {version!r}: not a SemVer version like 1.0.152")
    return version


def index_relpath(name: str) -> str:
    """cargo's index path of a crate, relative to the index root: ``1/a``, ``2/ab``,
    ``3/a/abc``, ``ab/cd/abcd…``, always from the lowercased name."""
    low = check_name(name).lower()
    if len(low) <= 2:
        return f"{len(low)}/{low}"
    if len(low) == 3:
        return f"3/{low[0]}/{low}"
    return f"{low[:2]}/{low[2:4]}/{low}"


def crate_filename(name: str, version: str) -> str:
    """The ``.crate`` file of a version at the mirror's root (cargo's local-registry name)."""
    return f"{check_name(name)}-{check_version(name, version)}.crate"


def same_crate(a: str, b: str) -> bool:
    """crates.io treats names equal up to case and ``-``/``_`` as one crate."""
    return a.lower().replace("-", "_") == b.lower().replace("-", "_")

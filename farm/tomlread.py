"""Parse TOML that someone else wrote (a tenant's Cargo.toml, Cargo.lock,
rust-toolchain.toml, a crate's manifest, a spec file).

tomllib recurses once per nesting level, so ``a = [[[[…`` a hundred thousand deep raises
RecursionError, not TOMLDecodeError: every caller would report a tenant's bad file as
farm's own crash. Here it is a TOMLDecodeError like any other malformed file.

Callers: farm.ecosystems.cargo, farm.spec, farm.provenance, farm.observe.classify and the cargo
ecosystem (lockfile, cratefile, gitpackage, toolchain).
"""

from __future__ import annotations

import tomllib
from typing import Any


def loads(text: str) -> dict[str, Any]:
    """``tomllib.loads``, with nesting too deep for it reported as TOMLDecodeError."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("nested too deeply to read") from None

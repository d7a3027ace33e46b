"""Which cargo build commands a dependency layer can serve: farm's default
``cargo build --release --locked --offline`` plus flags that only select what is built
(features, binaries, packages), parsed strictly.

Callers: ``farm.ecosystems.cargo.skeleton.dependency_argv`` (through
``Cargo.layer_argv``, which ``farm.layers.flow`` calls before it computes a key). The
dependency build runs the same selection on the skeleton, so the dependencies it compiles
are the ones the project's build needs, with the same features (cargo resolves features
per selected package, so a flag such as ``--no-default-features`` changes which
dependency units exist). Anything else (``--target``, ``--profile``, ``--target-dir``,
``--config``, ``-Z``, an unknown flag) raises ``NoLayer``: the build then runs cold, with
a note saying which flag. argv is part of the layer key as it is, so two selections
never share a layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from farm.ecosystems import NoLayer

#: Every layered build is offline, locked and release (the key's profile).
REQUIRED = ("--release", "--locked", "--offline")
#: Flags without a value that only select what is built.
SWITCHES = ("--no-default-features", "--all-features", "--bins", "--workspace")
#: Flags with a value (``--flag VALUE`` or ``--flag=VALUE``), by what the value is.
VALUED = {
    "--features": "features",
    "-F": "features",
    "--bin": "bin",
    "--package": "package",
    "-p": "package",
}
#: cargo's own rule for package and target names; never a leading ``-`` (a value that
#: looks like a flag is one: cargo's ``--bin`` may stand without a value).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
#: Feature names, ``dep/feature``, ``dep?/feature`` and ``dep:name``, comma or space separated.
FEATURES = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_+\-./:?, ]{0,4095}")
MAX_FLAGS = 64
#: Bound on the dependency build's ``sh -c`` script: Linux refuses to exec a single
#: argument over 128 KiB (MAX_ARG_STRLEN), and 64 words of 4,096 characters exceed it.
MAX_SCRIPT = 32 << 10
ACCEPTED = (
    "a dependency layer serves `cargo build --release --locked --offline` plus "
    "--features/-F, --no-default-features, --all-features, --bin, --bins, -p/--package "
    "and --workspace"
)


@dataclass(frozen=True)
class BuildFlags:
    """The selection flags of one layerable ``cargo build``, in argv's order."""

    flags: tuple[str, ...]
    bins: tuple[str, ...]
    packages: tuple[str, ...]


def parse(argv: list[str]) -> BuildFlags:
    """The selection flags of ``argv``; raises NoLayer for a command a layer cannot serve."""
    if argv[:2] != ["cargo", "build"]:
        raise NoLayer(f"{ACCEPTED}; this build runs {' '.join(argv[:2]) or 'nothing'!r}")
    rest = argv[2:]
    if len(rest) > MAX_FLAGS:
        raise NoLayer(f"more than {MAX_FLAGS} cargo flags")
    check_script(" ".join(rest))
    missing = [flag for flag in REQUIRED if flag not in rest]
    if missing:
        raise NoLayer(f"{ACCEPTED}; this build lacks {' '.join(missing)}")
    flags: list[str] = []
    values: dict[str, list[str]] = {"bin": [], "package": [], "features": []}
    i = 0
    while i < len(rest):
        arg = rest[i]
        i += 1
        if arg in REQUIRED:
            continue
        if arg in SWITCHES:
            flags.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name not in VALUED or (eq and not name.startswith("--")):
            raise NoLayer(f"cargo flag {arg!r} is not one a layer can reproduce: {ACCEPTED}")
        if not eq:
            if i == len(rest):
                raise NoLayer(f"cargo flag {arg!r} has no value")
            value = rest[i]
            i += 1
        kind = VALUED[name]
        _check_value(kind, arg, value)
        values[kind].append(value)
        flags.extend([name, value])
    return BuildFlags(tuple(flags), tuple(values["bin"]), tuple(values["package"]))


def _check_value(kind: str, flag: str, value: str) -> None:
    pattern = FEATURES if kind == "features" else NAME
    if not pattern.fullmatch(value):
        raise NoLayer(
            f"cargo flag {flag} {value!r}: a layer takes only plain {kind} names "
            f"({pattern.pattern})"
        )


def check_script(script: str) -> None:
    """NoLayer if ``script`` (or the flags that go into it) is over ``MAX_SCRIPT``."""
    if len(script.encode(errors="surrogatepass")) > MAX_SCRIPT:
        raise NoLayer(f"the dependency build's command would be longer than {MAX_SCRIPT} bytes")

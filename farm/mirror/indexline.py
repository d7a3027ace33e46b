"""cargo's registry-index line for one crate version, derived from its normalized Cargo.toml.

Callers: ``farm.mirror.store`` when a ``.crate`` is added. The line is what crates.io
would publish for the same upload (doc.rust-lang.org/cargo/reference/registry-index.html):
dependencies from ``[dependencies]``, ``[build-dependencies]``, ``[dev-dependencies]`` and
their ``[target.'cfg(..)'.*]`` forms, with a renamed dependency's table key as ``name``
and the real crate as ``package``; feature lists that use ``dep:`` or ``name?/feat``
split off into ``features2`` (then ``v`` is 2), as crates.io does so that old cargo
versions, which cannot parse them, skip only those. Everything is bounded and typed:
the manifest comes from a downloaded file. Strings have a per-kind bound (a target cfg key
is allowed far longer than a name) and the whole line has one (MAX_LINE_BYTES).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from farm.errors import MirrorError
from farm.mirror.layout import check_name, check_version

MAX_DEPS = 2000
MAX_FEATURES = 2000
MAX_STRING = 512
#: A ``[target.'cfg(..)']`` key. cargo's index schema (cargo_util_schemas::index::
#: RegistryDependency, ``target: Option<Cow<str>>``) and crates.io's publish bound neither
#: this nor any other string; real keys are long: rustix 0.38.37 has one of 626
#: characters. 4096 admits such with room while a key stays readable in an error.
MAX_TARGET = 4096
#: The whole line as written: the bound that matters against a hostile manifest, whose
#: per-list caps alone multiply to gigabytes. crates.io's largest lines (web-sys, windows,
#: with over a thousand features) are a few hundred KB.
MAX_LINE_BYTES = 1 << 20
_REQ = re.compile(r"[0-9A-Za-z.*^~=<>, +-]{1,256}")
_COMPARATOR = re.compile(r"(=|>=|<=|>|<|~|\^)?\s*(\S+)")
_KINDS = {
    "dependencies": "normal",
    "build-dependencies": "build",
    "build_dependencies": "build",
    "dev-dependencies": "dev",
    "dev_dependencies": "dev",
}

Kind = Literal["normal", "build", "dev"]


class IndexDep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    req: str
    features: list[str]
    optional: bool
    default_features: bool
    target: str | None
    kind: Kind
    registry: str | None = None
    package: str | None = None


class IndexLine(BaseModel):
    """One line of an index file: one published version of a crate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    vers: str
    deps: list[IndexDep]
    cksum: str
    features: dict[str, list[str]]
    features2: dict[str, list[str]] | None = None
    yanked: bool = False
    links: str | None = None
    rust_version: str | None = None
    v: int | None = None

    def to_json(self) -> str:
        """The line as crates.io writes it: compact, optional keys left out when unset."""
        data = self.model_dump(exclude_none=True)
        data["deps"] = [_dep_json(d) for d in self.deps]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _dep_json(dep: IndexDep) -> dict[str, Any]:
    # ``target`` is written even when null, as crates.io does; the rest only when set.
    data = dep.model_dump()
    return {k: v for k, v in data.items() if v is not None or k == "target"}


def index_line(manifest: dict[str, Any], cksum: str) -> IndexLine:
    """The index line of the crate whose normalized Cargo.toml is ``manifest`` and whose
    ``.crate`` has sha256 ``cksum``. Raises MirrorError naming the offending key."""
    package = _table(manifest.get("package"), "[package]")
    name = check_name(package.get("name"))
    vers = check_version(name, package.get("version"))
    label = f"{name} {vers}"
    deps = _deps(manifest, None, label)
    for target, tables in _table(manifest.get("target", {}), "[target]", label).items():
        _string(target, "a [target] key", label, MAX_TARGET)
        deps += _deps(_table(tables, f"[target.{target!r}]", label), target, label)
    if len(deps) > MAX_DEPS:
        raise MirrorError(f"{label}: more than {MAX_DEPS} dependencies")
    features, features2 = _features(manifest.get("features", {}), label)
    links = package.get("links")
    rust_version = package.get("rust-version")
    line = IndexLine(
        name=name,
        vers=vers,
        deps=deps,
        cksum=cksum,
        features=features,
        features2=features2 or None,
        links=None if links is None else _string(links, "package.links", label),
        rust_version=None
        if rust_version is None
        else _string(rust_version, "package.rust-version", label),
        v=2 if features2 else None,
    )
    size = len(line.to_json().encode())
    if size > MAX_LINE_BYTES:
        raise MirrorError(f"{label}: index line of {size} bytes is over {MAX_LINE_BYTES}")
    return line


def _deps(tables: dict[str, Any], target: str | None, label: str) -> list[IndexDep]:
    out = []
    for key, kind in _KINDS.items():
        for dep_name, spec in _table(tables.get(key, {}), f"[{key}]", label).items():
            dep = _dep(dep_name, spec, kind, target, f"{label}: [{key}] {dep_name}")
            if dep is not None:
                out.append(dep)
    return out


def _dep(key: str, spec: Any, kind: Kind, target: str | None, where: str) -> IndexDep | None:
    check_name(key)
    if isinstance(spec, str):
        spec = {"version": spec}
    spec = _table(spec, where)
    version = spec.get("version")
    if version is None:
        if kind == "dev":  # cargo publish drops path-only dev-dependencies; so do we
            return None
        raise MirrorError(f"{where}: a registry crate's dependency needs a version")
    package = spec.get("package")
    registry = spec.get("registry-index", spec.get("registry"))
    default_features = spec.get("default-features", spec.get("default_features", True))
    optional = spec.get("optional", False)
    if not isinstance(default_features, bool) or not isinstance(optional, bool):
        raise MirrorError(f"{where}: default-features and optional must be true or false")
    return IndexDep(
        name=key,
        req=_req(version, where),
        features=_strings(spec.get("features", []), "features", MAX_FEATURES, where),
        optional=optional,
        default_features=default_features,
        target=target,
        kind=kind,
        registry=None if registry is None else _string(registry, "registry", where),
        package=None if package is None else check_name(package),
    )


def _req(text: Any, where: str) -> str:
    """A version requirement as crates.io stores it: semver's display form, in which a
    bare ``1.0`` is ``^1.0`` and comparators are joined by ``, ``."""
    if not isinstance(text, str) or not _REQ.fullmatch(text):
        raise MirrorError(f"{where}: {text!r} is not a version requirement")
    out = []
    for part in text.split(","):
        match = _COMPARATOR.fullmatch(part.strip())
        if not match:
            raise MirrorError(f"{where}: {text!r} is not a version requirement")
        op, version = match.groups()
        if op is None and version[0].isdigit():
            op = "^"
        out.append((op or "") + version)
    return ", ".join(out)


def _features(value: Any, label: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    table = _table(value, "[features]", label)
    if len(table) > MAX_FEATURES:
        raise MirrorError(f"{label}: more than {MAX_FEATURES} features")
    plain: dict[str, list[str]] = {}
    extended: dict[str, list[str]] = {}
    for feature, members in table.items():
        _string(feature, "a feature name", label)
        items = _strings(members, f"feature {feature!r}", MAX_FEATURES, label)
        new_syntax = any(m.startswith("dep:") or "?/" in m for m in items)
        (extended if new_syntax else plain)[feature] = items
    return plain, extended


def _table(value: Any, what: str, label: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MirrorError(f"{label + ': ' if label else ''}{what} must be a table")
    return value


def _string(value: Any, what: str, label: str, cap: int = MAX_STRING) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= cap or "\x00" in value:
        raise MirrorError(f"{label}: {what} must be a string of 1 to {cap} characters")
    return value


def _strings(value: Any, what: str, cap: int, label: str = "") -> list[str]:
    if not isinstance(value, list) or len(value) > cap:
        raise MirrorError(f"{label}: {what} must be a list of at most {cap} strings")
    return [_string(v, what, label) for v in value]

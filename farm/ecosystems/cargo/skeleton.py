"""The dependency-only skeleton of a cargo project (cargo-chef's idea), made by farm.

Callers: ``farm.layers.flow``, through ``farm.ecosystems.cargo.vendor.Cargo``. From the
project's parsed manifests (``farm.ecosystems.cargo.defaults`` reads them beneath the
source, following no link) and its Cargo.lock, farm writes a
workspace with the same dependency sections, features, profiles and lock, and stub
targets (an empty ``src/lib.rs``, ``fn main() {}``) for every local package. Building
it compiles exactly the dependencies; nothing of the tenant's own code runs, on the
host or in the sandbox. The skeleton's files are also the layer's key material: two
projects whose skeletons are byte-identical get the same dependency build.

A project the skeleton cannot express (a path dependency outside the workspace, a
manifest value TOML cannot round-trip) raises ``NoLayer``; the build then runs cold.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import stat
import tomllib
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from farm import tomlread
from farm.confine import FILE_FLAGS, Outside, open_beneath, open_dir
from farm.ecosystems import NoLayer
from farm.ecosystems.cargo import buildflags
from farm.ecosystems.cargo.defaults import DEFAULT_ARGV, _is_file, _listing, _members, _read
from farm.errors import SpecError

#: package keys that decide how dependencies build (or must exist for cargo to read
#: the manifest); the rest (description, license…) only change the project's own crate.
PACKAGE_KEYS = ("name", "version", "edition", "rust-version", "links", "resolver", "workspace")
#: Top-level tables copied as they are: every one can change a dependency's build.
VERBATIM = (
    "cargo-features",
    "features",
    "dependencies",
    "build-dependencies",
    "dev-dependencies",
    "target",
    "patch",
    "replace",
    "profile",
)
WORKSPACE_KEYS = ("resolver", "dependencies", "exclude")
WORKSPACE_PACKAGE_KEYS = ("version", "edition", "rust-version")
#: Project files besides manifests that change how cargo builds dependencies.
EXTRA_FILES = (
    ("Cargo.lock",),
    (".cargo", "config.toml"),
    (".cargo", "config"),
    ("rust-toolchain.toml",),
    ("rust-toolchain",),
)
MAX_EXTRA = 16 << 20
#: Binaries one package's skeleton stubs, at most.
MAX_BINS = 256
LIB_STUB = b"// farm dependency-layer stub\n"
MAIN_STUB = b"// farm dependency-layer stub\nfn main() {}\n"


def plan(source: Path, within: Path | None = None) -> dict[str, bytes]:
    """The skeleton's files, relative path -> content. Raises NoLayer."""
    try:
        fd = open_dir(source, within)
    except (Outside, OSError) as exc:
        raise NoLayer(f"cannot open the source: {exc}") from None
    try:
        return _plan(fd)
    except SpecError as exc:
        raise NoLayer(str(exc)) from None
    finally:
        os.close(fd)


def local_packages(files: dict[str, bytes]) -> list[str]:
    """Names of the skeleton's own packages (their stubs must not stay in a layer)."""
    names = []
    for path, text in sorted(files.items()):
        if path.endswith("Cargo.toml") and path.count("/") <= 64:
            package = _load(path, text).get("package", {})
            if isinstance(package, dict) and isinstance(package.get("name"), str):
                names.append(package["name"])
    return names


def _plan(fd: int) -> dict[str, bytes]:
    members = _members(fd)
    dirs = {"/".join(m) for m in members}
    files: dict[str, bytes] = {}
    for member in members:
        prefix = "/".join(member)
        data = _read(fd, member)
        _check_paths(data, prefix, dirs)
        bins = _bins(fd, member, data)
        stubs = _stubs(fd, member, data, bins)
        files[_join(prefix, "Cargo.toml")] = dump(_manifest(data, stubs, bins, member == (), dirs))
        for rel, content in stubs.items():
            files[_join(prefix, rel)] = content
    for parts in EXTRA_FILES:
        content = _extra(fd, parts)
        if content is not None:
            files["/".join(parts)] = content
    if "Cargo.lock" not in files:
        raise NoLayer("the project has no Cargo.lock")
    return files


def _bins(fd: int, member: tuple[str, ...], data: dict[str, Any]) -> list[dict[str, Any]]:
    """The package's binaries, each a stub under its own name (so ``--bin NAME`` selects
    the same target in the skeleton): every named ``[[bin]]`` with its
    ``required-features``, then, unless ``autobins = false``, those cargo discovers
    (``src/main.rs`` under the package's name, ``src/bin/NAME.rs``,
    ``src/bin/NAME/main.rs``) that no ``[[bin]]`` already claims by name or file."""
    package = data.get("package")
    if not isinstance(package, dict):
        return []
    declared = data.get("bin") if isinstance(data.get("bin"), list) else []
    bins: list[dict[str, Any]] = []
    seen: set[str] = set()  # a set, not a scan of bins: a manifest may hold 200,000 tables
    for entry in declared:
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name not in seen:
            stub: dict[str, Any] = {"name": _bin_name(name)}
            required = entry.get("required-features")
            if isinstance(required, list) and all(isinstance(f, str) for f in required):
                stub["required-features"] = required
            bins.append(stub)
            seen.add(name)
            _check_bin_count(bins)
    own = package.get("name") if isinstance(package.get("name"), str) else "stub"
    claimed = seen | {
        posixpath.normpath(e["path"])
        for e in declared
        if isinstance(e, dict) and isinstance(e.get("path"), str)
    }
    if package.get("autobins") is not False:
        for name, path in _discovered_bins(fd, member, own):
            if not claimed & {name, path}:
                bins.append({"name": _bin_name(name)})
                claimed |= {name, path}
                _check_bin_count(bins)
    if declared and not bins:
        bins.append({"name": own})  # [[bin]] tables without a name: one stub, as before
    for i, stub in enumerate(bins):
        stub["path"] = "src/main.rs" if i == 0 else f"src/bin/farm-stub-{i}.rs"
    return bins


def _check_bin_count(bins: list[dict[str, Any]]) -> None:
    """Declared and discovered binaries together: each is a stub file and a key entry."""
    if len(bins) > MAX_BINS:
        raise NoLayer(f"the package has more than {MAX_BINS} binaries")


def _bin_name(name: str) -> str:
    """``name`` if it is a plain target name; the skeleton's TOML (``dump``) cannot carry
    every string (a lone surrogate from a non-UTF-8 file name, a non-BMP character)."""
    if not buildflags.NAME.fullmatch(name):
        pattern = buildflags.NAME.pattern
        raise NoLayer(f"binary name {name!r} is not a plain target name ({pattern})")
    return name


def _discovered_bins(fd: int, member: tuple[str, ...], own: str) -> list[tuple[str, str]]:
    """(name, path) of the binaries cargo finds by itself in the package's tree."""
    found = [(own, "src/main.rs")] if _is_file(fd, (*member, "src", "main.rs")) else []
    for entry in _listing(fd, (*member, "src", "bin"))[:MAX_BINS]:
        if entry.endswith(".rs") and _is_file(fd, (*member, "src", "bin", entry)):
            found.append((entry[:-3], f"src/bin/{entry}"))
        elif _is_file(fd, (*member, "src", "bin", entry, "main.rs")):
            found.append((entry, f"src/bin/{entry}/main.rs"))
    return found


def _stubs(
    fd: int, member: tuple[str, ...], data: dict[str, Any], bins: list[dict[str, Any]]
) -> dict[str, bytes]:
    """Stub targets: a lib if the package has one, one file per binary, a build script."""
    if not isinstance(data.get("package"), dict):
        return {}  # a virtual workspace root
    stubs: dict[str, bytes] = {}
    if isinstance(data.get("lib"), dict) or _is_file(fd, (*member, "src", "lib.rs")):
        stubs["src/lib.rs"] = LIB_STUB
    for stub in bins:
        stubs[stub["path"]] = MAIN_STUB
    build = data["package"].get("build")
    if build is not False and (isinstance(build, str) or _is_file(fd, (*member, "build.rs"))):
        stubs["build.rs"] = MAIN_STUB
    if not stubs:
        raise NoLayer(f"package {'/'.join(member) or '.'} has no target farm can stub")
    return stubs


def _manifest(
    data: dict[str, Any],
    stubs: dict[str, bytes],
    bins: list[dict[str, Any]],
    root: bool,
    dirs: set[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {k: data[k] for k in VERBATIM if k in data}
    package = data.get("package")
    if isinstance(package, dict):
        kept = {k: package[k] for k in PACKAGE_KEYS if k in package}
        for auto in ("autobins", "autoexamples", "autotests", "autobenches"):
            kept[auto] = False
        kept["build"] = "build.rs" if "build.rs" in stubs else False
        out["package"] = kept
        if "src/lib.rs" in stubs:
            lib = data.get("lib") if isinstance(data.get("lib"), dict) else {}
            out["lib"] = {k: lib[k] for k in ("name", "proc-macro", "crate-type") if k in lib}
            out["lib"]["path"] = "src/lib.rs"
        if bins:
            out["bin"] = bins
    workspace = data.get("workspace")
    if root and isinstance(workspace, dict):
        kept_ws = {k: workspace[k] for k in WORKSPACE_KEYS if k in workspace}
        kept_ws["members"] = sorted(d for d in dirs if d)
        inherited = workspace.get("package")
        if isinstance(inherited, dict):
            kept_ws["package"] = {k: inherited[k] for k in WORKSPACE_PACKAGE_KEYS if k in inherited}
        out["workspace"] = kept_ws
    return out


def _check_paths(data: dict[str, Any], prefix: str, dirs: set[str]) -> None:
    """Every ``path = …`` of a dependency or patch must name a workspace package: the
    skeleton holds only those."""
    sections = [data.get(k) for k in (*VERBATIM, "workspace")]
    for found in _path_values(sections):
        target = posixpath.normpath(posixpath.join(prefix or ".", found))
        if (target if target != "." else "") not in dirs:
            raise NoLayer(f"path dependency {found!r} is not a workspace member")


def _path_values(data: Any) -> list[str]:
    if isinstance(data, dict):
        found = [data["path"]] if isinstance(data.get("path"), str) else []
        return found + [p for v in data.values() for p in _path_values(v)]
    if isinstance(data, list):
        return [p for v in data for p in _path_values(v)]
    return []


def _extra(fd: int, parts: tuple[str, ...]) -> bytes | None:
    try:
        file_fd = open_beneath(fd, parts, FILE_FLAGS)
    except OSError:
        return None
    with os.fdopen(file_fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            return None
        content = fh.read(MAX_EXTRA + 1)
    if len(content) > MAX_EXTRA:
        raise NoLayer(f"{'/'.join(parts)} is larger than {MAX_EXTRA} bytes")
    return content


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def dump(data: dict[str, Any]) -> bytes:
    """TOML for a parsed manifest: tables as ``[a."b"]`` headers, everything below them
    inline. Keys and strings are written as JSON strings (valid TOML basic strings)."""
    lines: list[str] = []
    _table(data, [], lines)
    return ("\n".join(lines) + "\n").encode()


def _table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    if path and (scalars or not data):
        lines.append(f"[{'.'.join(map(_key, path))}]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in data.items():
        if _is_table(value):
            _table(value, [*path, key], lines)
        elif _is_table_array(value):
            for item in value:
                lines.append(f"[[{'.'.join(map(_key, [*path, key]))}]]")
                for k, v in item.items():
                    lines.append(f"{_key(k)} = {_value(v)}")


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    return json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, datetime | date | time):
        raise NoLayer("a manifest holds a date, which the skeleton does not copy")
    raise NoLayer(f"a manifest holds a value farm cannot copy ({type(value).__name__})")


def dependency_argv(files: dict[str, bytes], argv: list[str]) -> list[str]:
    """The project's own ``cargo build`` selection (``argv``, parsed strictly by
    ``buildflags``) run on the skeleton, then the stubs' own units dropped: a layer holds
    dependencies only, so cargo can never take a stub for the project's real crate.
    Raises NoLayer for a command a layer cannot serve, or a ``--bin``/``-p`` the
    skeleton does not have."""
    flags = buildflags.parse(argv)
    packages = local_packages(files)
    unknown = [p for p in flags.packages if p not in packages]
    if unknown:
        raise NoLayer(f"-p {unknown[0]}: not a package of this project's workspace")
    stubbed = bin_names(files)
    unknown = [b for b in flags.bins if b not in stubbed]
    if unknown:
        raise NoLayer(f"--bin {unknown[0]}: not a [[bin]] (or src/main.rs) of this project")
    build = shlex.join([*DEFAULT_ARGV, *flags.flags])
    clean = " ".join(f"-p {_quote(name)}" for name in packages)
    script = f"{build} && cargo clean --release --locked --offline {clean}" if clean else build
    buildflags.check_script(script)
    return ["sh", "-c", script]


def bin_names(files: dict[str, bytes]) -> set[str]:
    """The names of the skeleton's stub binaries."""
    names: set[str] = set()
    for path, text in sorted(files.items()):
        if path.endswith("Cargo.toml"):
            bins = _load(path, text).get("bin", [])
            names.update(b["name"] for b in bins if isinstance(b, dict) and "name" in b)
    return names


def _load(path: str, text: bytes) -> dict[str, Any]:
    """A skeleton manifest, parsed; NoLayer (a cold build) if TOML rejects what ``dump``
    wrote from a tenant's values, rather than a crash."""
    try:
        return tomlread.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NoLayer(f"skeleton {path} is not valid TOML: {exc}") from None


def _quote(name: str) -> str:
    """Package names are [A-Za-z0-9_-] (cargo refuses others); anything else is quoted."""
    return (
        name if all(c.isalnum() or c in "-_" for c in name) else "'" + name.replace("'", "") + "'"
    )

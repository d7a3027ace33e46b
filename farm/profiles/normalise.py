"""Paths as a profile keeps them: what differs between two clean builds stripped out,
and which category (hence severity, farm.profiles.model.SEVERITY) a path falls in.

Callers: ``farm.profiles.derive``. Rules (docs/observer.md, "Normalisation"):

- cargo's per-build hashes (``build/foo-1a2b3c4d5e6f7a8b/``, ``libfoo-<hash>.rlib``)
  become ``*``; the target directory becomes ``<target>``;
- a process id under ``/proc`` becomes ``<pid>``;
- under ``/tmp`` a name ending in six random letters and digits (mkstemp's ``XXXXXX``,
  rustc's ``rustcAb12Cd``) keeps its stem (``rustc*``).
"""

from __future__ import annotations

import re

from farm.observe.classify import SENSITIVE
from farm.policy import OUT, SRC, TARGET, TMP

#: Read-only trees whose contents a build reads all the time: the package sources
#: (the tenant's tree and the image's vendored crates) and this build's own outputs.
SOURCES = (SRC, "/usr/share/cargo/registry", TARGET)
SCRATCH = (TMP, TARGET, OUT, "/dev/shm", "/var/tmp")
TOOLCHAIN = ("/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/", "/proc/", "/sys/", "/opt/")
#: Files of /etc that the C library and the toolchain read in any build.
TOOLCHAIN_ETC = re.compile(
    r"^/etc/(ld\.so\..*|nsswitch\.conf|passwd|group|localtime|host\.conf|hosts|"
    r"resolv\.conf|gai\.conf|os-release|mime\.types|ssl/.*|ca-certificates.*)$"
)
#: Never part of a profile: every process opens these.
IGNORED = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/tty", "/"})

_HASH = re.compile(r"-[0-9a-f]{16}(?=[./]|$)")
_PID = re.compile(r"^/proc/\d+(?=/|$)")
_RANDOM = re.compile(r"^(?P<stem>.*?)(?P<rand>[A-Za-z0-9]{6})(?P<ext>(\.[A-Za-z0-9_]+)*)$")


def under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r.rstrip("/") or path.startswith(r.rstrip("/") + "/") for r in roots)


def normalise(path: str) -> str:
    """``path`` without what differs between two clean builds of the same sources."""
    path = _HASH.sub("-*", path)
    path = _PID.sub("/proc/<pid>", path)
    if under(path, (TARGET,)):
        path = "<target>" + path[len(TARGET) :]
    elif under(path, (TMP,)):
        path = TMP + "".join("/" + _unrandom(p) for p in path[len(TMP) :].split("/") if p)
    return path


def _unrandom(name: str) -> str:
    m = _RANDOM.match(name)
    if not m:
        return name
    rand = m.group("rand")
    mixed = any(c.isdigit() for c in rand) or (rand != rand.lower() and rand != rand.upper())
    return f"{m.group('stem')}*{m.group('ext') or ''}" if mixed else name


def category(path: str) -> str:
    """``sensitive``, ``scratch``, ``toolchain`` or ``other`` for a raw (canonical) path."""
    if SENSITIVE.search(path):
        return "sensitive"
    if under(path, SCRATCH):
        return "scratch"
    if under(path, TOOLCHAIN) or TOOLCHAIN_ETC.match(path):
        return "toolchain"
    return "other"


def entry_category(entry: str) -> str:
    """:func:`category` of an entry already normalised: its placeholders stand for any
    value (``/proc/<pid>/environ`` is still a secret, ``<target>`` still scratch)."""
    return category(_PLACEHOLDER_PID.sub("/proc/1", entry.replace("<target>", TARGET, 1)))


_PLACEHOLDER_PID = re.compile(r"^/proc/<pid>(?=/|$)")

"""``farm diff PKG[@A] [@B]``: how a package's behaviour profile changed (issue 15).

Callers: ``farm.cli`` adds the parser with :func:`add_parsers`. Forms:

- ``farm diff PKG@A @B``: version A's newest profile against version B's;
- ``farm diff PKG@B``: B's newest profile against the profile known before it (the
  newest of another version built earlier, else an earlier build of B);
- ``farm diff PKG``: the same for the version built last;
- ``--build ID``: that build's profile against the last one known before the build.
"""

from __future__ import annotations

import argparse
from typing import Any

from farm.errors import InputError, NotFoundError
from farm.profiles.diff import diff, render
from farm.profiles.model import Profile, ProfileDiff
from farm.profiles.store import ProfileStore
from farm.settings import Settings


def add_parsers(sub: Any) -> None:
    d = sub.add_parser(
        "diff",
        help="what a package's behaviour profile gained or lost between two versions",
        usage="farm diff PKG[@A] [@B] [--build ID] [--tenant T] [--json]",
    )
    d.add_argument("package", metavar="PKG[@A]")
    d.add_argument("other", nargs="?", metavar="@B")
    d.add_argument("--build", metavar="ID", help="this build's profile against the one before")
    d.add_argument("--tenant", default="default")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace, settings: Settings) -> int:
    package, _, version = args.package.partition("@")
    if not package:
        raise InputError(f"{args.package!r}: name a package, as in `farm diff serde@1.0.152`")
    if args.other is not None and not (args.other.startswith("@") and len(args.other) > 1):
        raise InputError(f"{args.other!r}: the second version is written @VERSION")
    store = ProfileStore(settings.home)
    result = compare(store, args.tenant, package, version or None, args.other, args.build)
    print(result.model_dump_json(indent=2) if args.json else render(result))
    return 0


def compare(
    store: ProfileStore,
    tenant: str,
    package: str,
    version: str | None,
    other: str | None,
    build: str | None,
) -> ProfileDiff:
    """Raises NotFoundError when a profile named is not in the store."""
    history = store.history(tenant, package)  # newest first
    if not history:
        raise NotFoundError(
            f"no behaviour profile of {package!r} for tenant {tenant!r}; "
            "profiles come from observed builds (farm build, without --no-observe)"
        )
    if other is not None:
        if version is None:
            raise InputError(f"name the first version too: `farm diff {package}@A {other}`")
        base, new = _newest(history, package, version), _newest(history, package, other[1:])
        return diff(base[1], new[1], base_builds=[base[0]], new_builds=[new[0]])
    if build is not None:
        idx = next((i for i, (b, _) in enumerate(history) if b.startswith(build)), None)
        if idx is None:
            raise NotFoundError(f"build {build!r} has no profile of {package!r}")
    else:
        versions = [p.version for _, p in history]
        idx = 0 if version is None else _index(versions, package, version)
    build_id, new = history[idx]
    earlier = history[idx + 1 :]
    base = next(((b, p) for b, p in earlier if p.version != new.version), None)
    base = base or (earlier[0] if earlier else None)
    return diff(
        base[1] if base else None,
        new,
        base_builds=[base[0]] if base else [],
        new_builds=[build_id],
    )


def _newest(history: list[tuple[str, Profile]], package: str, version: str) -> tuple[str, Profile]:
    for build_id, profile in history:
        if profile.version == version:
            return build_id, profile
    known = sorted({p.version for _, p in history})
    raise NotFoundError(f"no profile of {package} {version}; known versions: {', '.join(known)}")


def _index(versions: list[str], package: str, version: str) -> int:
    if version not in versions:
        raise NotFoundError(
            f"no profile of {package} {version}; known versions: {', '.join(sorted(set(versions)))}"
        )
    return versions.index(version)

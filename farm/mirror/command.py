"""The ``farm mirror`` subcommands: create, add, list, serve (docs/mirror.md).

Callers: ``farm.cli`` adds these parsers with :func:`add_parsers`. This module parses
and prints only; ``farm.mirror.fill``, ``store`` and ``serve`` do the work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from farm.errors import InputError, MirrorError
from farm.httpserver import HttpLimits
from farm.settings import Settings


def add_parsers(sub: Any) -> None:
    group = sub.add_parser(
        "mirror", help="an offline crates.io-compatible registry in a directory"
    ).add_subparsers(required=True, metavar="ACTION")

    create = group.add_parser("create", help="make DIR a mirror (idempotent)")
    create.add_argument("dir", type=Path)
    create.set_defaults(func=cmd_create)

    add = group.add_parser(
        "add",
        help="add .crate files, a Cargo.lock's packages or Debian rust-* source packages",
        usage="farm mirror add DIR [FILE.crate…] [--lock Cargo.lock --registry URL] "
        "[--debian rust-NAME[=VER][/SUITE]…] [--debian-binary PROGRAM[/SUITE]…]",
    )
    add.add_argument("dir", type=Path)
    add.add_argument("files", nargs="*", type=Path, metavar="FILE.crate")
    add.add_argument("--lock", type=Path, help="download every registry package of this lock")
    add.add_argument("--registry", metavar="URL", help="sparse index to download --lock from")
    add.add_argument(
        "--debian",
        action="append",
        default=[],
        metavar="PKG[=VER][/SUITE]",
        help="a Debian source package whose orig tarball is the crate (repeatable)",
    )
    add.add_argument(
        "--debian-binary",
        action="append",
        default=[],
        metavar="PROGRAM[/SUITE]",
        help="every crate PROGRAM needs in SUITE, repacked from Debian's librust-*-dev "
        "packages (origin debian-derived: NOT crates.io's bytes; docs/realworld.md)",
    )
    add.add_argument("--suite", default=None, help="default Debian suite (default bookworm)")
    add.add_argument("--debian-mirror", metavar="URL", default=None, help="Debian archive URL")
    add.add_argument("--keyring", type=Path, default=None, help="Debian archive keyring for gpgv")
    add.add_argument(
        "--strict", action="store_true", help="fail (exit 2) if any item was not added"
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_add)

    ls = group.add_parser("list", help="list the crates a mirror holds and their origin")
    ls.add_argument("dir", type=Path)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    serve = group.add_parser("serve", help="serve DIR as a sparse registry over HTTP")
    serve.add_argument("dir", type=Path)
    serve.add_argument(
        "--listen", default="127.0.0.1:8771", metavar="HOST:PORT", help="(port 0: any free one)"
    )
    serve.add_argument("--http-timeout", type=float, default=30, help="seconds per request")
    serve.add_argument("--max-connections", type=int, default=64)
    serve.add_argument("--max-waiting", type=int, default=256)
    serve.set_defaults(func=cmd_serve)


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    from farm.mirror.store import Mirror

    Mirror(args.dir).create()
    print(f"farm mirror: {args.dir} is a mirror; fill it with `farm mirror add {args.dir} …`")
    return 0


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from farm.fetch.registry import RegistryClient, registry_from_cli
    from farm.mirror import debian, fill
    from farm.mirror.store import Mirror

    if not (args.files or args.lock or args.debian or args.debian_binary):
        raise InputError("farm mirror add: give FILE.crate…, --lock, --debian or --debian-binary")
    if bool(args.lock) != bool(args.registry):
        raise InputError("--lock and --registry go together: the lock and where to download it")
    requests = [debian.SourceRequest.parse(d) for d in args.debian]
    lock_text = _read_lock(args.lock) if args.lock else None
    registry = RegistryClient(registry_from_cli(args.registry)) if args.registry else None
    mirror = Mirror(args.dir)
    mirror.check()
    results = fill.add_files(mirror, args.files)
    if lock_text is not None and registry is not None:
        results += fill.add_lock(mirror, lock_text, registry)
    if requests:
        archive = debian.DebianArchive(
            args.debian_mirror or debian.DEFAULT_ARCHIVE,
            keyring=args.keyring or debian.KEYRING,
            cache_dir=_cache_dir(),
        )
        results += fill.add_debian(mirror, requests, archive, args.suite or debian.DEFAULT_SUITE)
    for item in args.debian_binary:
        results += _add_debian_binary(mirror, item, args)
    _print_results(results, args.json)
    failed = [r for r in results if r.status != "added"]
    if args.strict and failed:
        raise MirrorError(f"{len(failed)} of {len(results)} items were not added (--strict)")
    return 0


def _add_debian_binary(mirror: Any, item: str, args: argparse.Namespace) -> list[Any]:
    """``--debian-binary PROGRAM[/SUITE]``: the Debian-derived tier (farm.mirror.debian_binary)."""
    from farm.mirror import debarchive, debian, debian_binary
    from farm.mirror.fill import FillResult

    program, _, suite = item.partition("/")
    archive = debarchive.DebianArchive(
        _cache_dir(),
        args.debian_mirror or debarchive.DEFAULT_ARCHIVE,
        args.keyring or debarchive.KEYRING,
    )
    crates = debian_binary.add_program(
        mirror, archive, suite or args.suite or debian.DEFAULT_SUITE, program
    )
    return [
        FillResult(item=c.deb, status="added", entry=mirror.get(c.name, c.version)) for c in crates
    ]


def _read_lock(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--lock {path}: cannot read it ({exc})") from None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "farm" / "debian"


def _print_results(results: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
        return
    for r in results:
        if r.entry is not None:
            e = r.entry
            print(f"{r.status:8} {e.name} {e.version}  {e.cksum[:16]}…  {e.origin}")
        else:
            print(f"{r.status:8} {r.item}: {r.note}")


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from farm.mirror.store import Mirror

    entries = Mirror(args.dir).entries()
    if args.json:
        print(json.dumps([e.model_dump() for e in entries], indent=2))
    for e in [] if args.json else entries:
        print(f"{e.name} {e.version}  {e.cksum}  {e.origin}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from farm.mirror.serve import MirrorServer, serve_until_signal
    from farm.mirror.store import Mirror

    host, port = _listen(args.listen)
    try:
        limits = HttpLimits(
            timeout_seconds=args.http_timeout,
            max_connections=args.max_connections,
            max_waiting=args.max_waiting,
        )
    except ValidationError as exc:
        raise InputError(f"HTTP limits: {exc.errors()[0]['msg']}") from None
    try:
        server = MirrorServer(Mirror(args.dir), host, port, limits)
    except OSError as exc:
        raise InputError(f"--listen {args.listen}: cannot listen ({exc.strerror})") from None
    print(server.index_url, flush=True)
    serve_until_signal(
        server, say=lambda m: print(f"farm mirror: {m}", file=sys.stderr, flush=True)
    )
    return 0


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"--listen {text!r}: use HOST:PORT, e.g. 127.0.0.1:8771")
    return host, int(port)

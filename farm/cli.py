"""The ``farm`` command line. Human output by default, ``--json`` for machines.

Exit codes (design brief): 0 success, 1 build failed, 2 bad input, 3 quarantined,
4 infrastructure error. This module only parses, wires objects together and prints;
the work happens in ``farm.buildflow``, ``farm.runner``, ``farm.host``, ``farm.images``
and ``farm.verify``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.errors import ExitCode, FarmError, InputError
from farm.settings import Settings
from farm.spec import TENANT_NAME, BuildSpec, build_spec, load_spec_file
from farm.specdefaults import Interrupted
from farm.store import Store

if TYPE_CHECKING:
    from farm.buildflow import Outcome
    from farm.fetch.registry import Registry
    from farm.logs import CappedLog
    from farm.records import BuildRecord
    from farm.runner import Runner
    from farm.sandbox import Backend

#: ``farm build --resolve-lock`` given without MIRROR_DIR (no argument can hold a NUL):
#: for farm serve, which resolves against its operator's mirror.
SERVER_MIRROR = Path("\x00farm-serve-mirror")


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    # Everything after the first `--` is the build's argv, never farm's own options.
    cut = words.index("--") if "--" in words else len(words)
    args = _parser(_command(words[:cut])).parse_args(words[:cut])
    args.build_argv = words[cut + 1 :]
    try:
        settings = Settings.from_env(
            insecure_runtime=getattr(args, "insecure_runtime", None),
            observe=getattr(args, "observe", None),
        )
        return int(args.func(args, settings))
    except FarmError as exc:
        print(f"farm: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except Exception:  # a bug or an unexpected host failure: still exit 4, with the trace
        traceback.print_exc()
        print("farm: internal error (exit 4); please report the trace above", file=sys.stderr)
        return int(ExitCode.INFRASTRUCTURE)


def _command(words: list[str]) -> str | None:
    """The subcommand asked for (farm's own options all come after it), or None."""
    return next((w for w in words if not w.startswith("-")), None)


class _Version(argparse.Action):
    """``--version``, reading the installed version only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show farm's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from farm.images import VERSION

        print(f"farm {VERSION}")
        parser.exit()


def _git_host_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--git-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a host the fetch phase may fetch Cargo.lock's git dependencies from "
        "(repeatable; adds to $FARM_GIT_HOSTS)",
    )


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command``, the subcommands whose options need
    modules of their own (observer, Kubernetes, mirror, diff, image) are added only when
    they are the one run, so `farm build` imports none of them (a cache hit's time)."""
    p = argparse.ArgumentParser(
        prog="farm", description="Run untrusted builds in a gVisor sandbox with no network."
    )
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    b = sub.add_parser(
        "build",
        help="build a project in a gVisor sandbox",
        usage="farm build [PATH] [options] [-- CMD ARGS…]",
    )
    b.add_argument("path", nargs="?", help="project directory (or `source` in --spec)")
    b.add_argument("--spec", type=Path, help="a JSON or TOML BuildSpec; flags override it")
    b.add_argument("--image")
    b.add_argument(
        "--env",
        action="append",
        metavar="NAME=VALUE",
        default=[],
        help="pass one variable; the host environment never passes through",
    )
    b.add_argument(
        "--output",
        action="append",
        metavar="GLOB",
        dest="outputs",
        help="an output glob under out/ or target/ (repeatable)",
    )
    b.add_argument("--timeout", type=int, dest="timeout_seconds")
    b.add_argument("--tenant")
    for name in ("cpus", "memory", "pids", "scratch", "disk"):
        b.add_argument(f"--{name}", help=f"resources.{name}")
    b.add_argument(
        "--insecure-runtime",
        choices=["runc"],
        help="run WITHOUT gVisor; recorded in the build's record",
    )
    b.add_argument("--follow", action="store_true", help="stream the build's log")
    b.add_argument(
        "--observe",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record what gVisor saw and report blocked actions (default: on, "
        "except with --insecure-runtime)",
    )
    b.add_argument(
        "--mode",
        choices=["audit", "enforce"],
        help="observe.mode: enforce (default) quarantines a build whose dependencies tried "
        "something the policy does not allow (exit 3, artifacts withheld); audit only records",
    )
    b.add_argument(
        "--check",
        type=int,
        default=0,
        metavar="N",
        help="build N times in varied sandboxes and compare (reproducibility check)",
    )
    b.add_argument("--no-cache", action="store_true", help="build even if a clean result exists")
    b.add_argument(
        "--layer",
        action="store_true",
        help="start from the project's verified dependency layer, making it first if "
        "there is none (docs/layers.md); not with --check or --no-cache, which build cold",
    )
    b.add_argument("--json", action="store_true")
    b.add_argument(
        "--server",
        metavar="URL",
        help="submit to this `farm serve` (default $FARM_SERVER; token from $FARM_TOKEN)",
    )
    b.add_argument("--local", action="store_true", help="build here even if FARM_SERVER is set")
    _git_host_option(b)
    b.add_argument(
        "--registry",
        metavar="INDEX_URL|NAME",
        help="run the fetch phase first: download Cargo.lock's crates from this sparse "
        "registry (e.g. sparse+http://127.0.0.1:8080/index/) or a registry named in "
        "$FARM_REGISTRIES; the sandbox sees them read-only at /vendor",
    )
    b.add_argument(
        "--resolve-lock",
        type=Path,
        nargs="?",
        const=SERVER_MIRROR,
        metavar="MIRROR_DIR",
        help="write the build's Cargo.lock first: the image's cargo resolves the manifests "
        "against this farm mirror directory, in a sandbox with no network (your tree is "
        "not changed; provenance says so); use with --registry serving that mirror. With "
        "--server, give no MIRROR_DIR: farm serve resolves against its operator's mirror",
    )
    b.set_defaults(func=cmd_build)

    f = sub.add_parser(
        "fetch",
        help="run only the fetch phase: vendor a project's locked dependencies into DIR",
    )
    f.add_argument("path", help="project directory (with Cargo.lock)")
    f.add_argument("--dest", type=Path, required=True, help="a new directory for the result")
    _git_host_option(f)
    f.add_argument(
        "--registry",
        metavar="INDEX_URL|NAME",
        help="sparse index URL or a name in $FARM_REGISTRIES (default: crates.io)",
    )
    f.add_argument(
        "--within",
        type=Path,
        metavar="DIR",
        help="the project path must lie inside DIR, reached without following any link "
        "(the cluster's fetch pod: the checked-out tree is the tenant's)",
    )
    f.add_argument(
        "--always-vendor",
        action="store_true",
        help="with nothing to fetch, still write an empty vendor directory and cargo config "
        "(the cluster's build pod mounts both)",
    )
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fetch)

    sv = sub.add_parser("serve", help="run builds as a service: HTTP API, queue, /metrics")
    sv.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8770, help="port (0: any free one)")
    sv.add_argument("--concurrency", type=int, default=2, help="builds running at once")
    sv.add_argument(
        "--tenant-limit",
        type=int,
        help="builds one tenant may run at once (default: --concurrency)",
    )
    sv.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="TENANT=N",
        help="a per-tenant override of --tenant-limit (repeatable)",
    )
    sv.add_argument("--tokens", type=Path, help="JSON file of bearer tokens per tenant")
    sv.add_argument(
        "--source-root",
        type=Path,
        help="submitted sources must lie under it (with tokens: under it/TENANT); default: cwd",
    )
    sv.add_argument(
        "--observe",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record what gVisor saw in every build (default: on)",
    )
    sv.add_argument(
        "--ceiling",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the most a spec may ask for, e.g. memory=8g, timeout_seconds=3600 "
        "(repeatable; defaults in docs/serve.md)",
    )
    sv.add_argument(
        "--allow-image",
        action="append",
        metavar="PATTERN",
        help="an image builds may run, e.g. farm/rust:bookworm or name@sha256:... "
        "(repeatable; default $FARM_ALLOWED_IMAGES, else farm/rust:bookworm)",
    )
    sv.add_argument(
        "--http-timeout",
        type=float,
        default=30,
        metavar="SECONDS",
        help="a client's time to send its request head, and per read/write after (default 30)",
    )
    sv.add_argument(
        "--max-connections",
        type=int,
        default=64,
        help="requests handled at once; beyond it 503 (default 64)",
    )
    sv.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="connections still sending their request head; beyond it the oldest is closed "
        "(default 256)",
    )
    _git_host_option(sv)
    sv.add_argument(
        "--registries",
        type=Path,
        metavar="FILE",
        help="JSON list of the registries specs may name ({name, index, token_file}); "
        "default $FARM_REGISTRIES. A spec names one; it never gives a URL or token",
    )
    sv.add_argument(
        "--resolve-mirror",
        type=Path,
        metavar="MIRROR_DIR",
        help="a farm mirror directory: a build submitted with resolve_lock (farm build "
        "--resolve-lock) gets its Cargo.lock resolved against it first; without it such a "
        "build is refused",
    )
    sv.set_defaults(func=cmd_serve)

    ls = sub.add_parser("list", help="list builds")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="what a build's dependencies tried, per package")
    rep.add_argument("id")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--server", metavar="URL", help="ask this `farm serve` (default $FARM_SERVER)")
    rep.add_argument("--local", action="store_true", help="read this host's store")
    rep.add_argument(
        "--cargo-vet",
        action="store_true",
        help="notes for cargo-vet's safe-to-run, per package observed clean (evidence only)",
    )
    rep.set_defaults(func=cmd_report)
    blk = sub.add_parser(
        "blocked",
        help="a cluster build's blocked actions, by the digest in its Build's status "
        "(observation.actionsSha256), from the controller's store",
    )
    blk.add_argument("digest", help="sha256 (64 hex characters; `sha256:` prefix allowed)")
    blk.add_argument("--json", action="store_true")
    blk.set_defaults(func=cmd_blocked)
    show = sub.add_parser("show", help="show one build's record")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    logs = sub.add_parser("logs", help="print a build's stored log")
    logs.add_argument("id")
    logs.set_defaults(func=cmd_logs)
    arts = sub.add_parser("artifacts", help="copy a build's artifacts out of the store")
    arts.add_argument("id")
    arts.add_argument("--dest", type=Path, required=True)
    arts.set_defaults(func=cmd_artifacts)
    gc = sub.add_parser("gc", help="prune old builds and unreferenced blobs")
    gc.add_argument(
        "--keep", type=int, default=100, help="newest builds to keep per tenant (default 100)"
    )
    gc.add_argument(
        "--cache-max-size", default="10g", help="bound on cached artifacts (e.g. 500m, 10g)"
    )
    gc.add_argument(
        "--layers-max-size", default="20g", help="bound on dependency layers (default 20g)"
    )
    gc.add_argument(
        "--layers-max-count",
        type=int,
        default=32,
        help="dependency layers to keep, most recently used first (default 32)",
    )
    gc.set_defaults(func=cmd_gc)
    prov = sub.add_parser("provenance", help="print a build's signed SLSA provenance (DSSE)")
    prov.add_argument("id")
    prov.add_argument("--out", type=Path, help="write to FILE instead of stdout")
    prov.set_defaults(func=cmd_provenance)
    ver = sub.add_parser("verify", help="check an artifact against its signed provenance")
    ver.add_argument("artifact", type=Path)
    ver.add_argument("--provenance", type=Path, required=True, metavar="FILE")
    ver.add_argument("--key", type=Path, help="public key (default: this installation's)")
    ver.add_argument(
        "--require",
        action="append",
        default=[],
        choices=["reproducible", "no-network", "cold"],
        help="also require this of the build (repeatable)",
    )
    ver.add_argument(
        "--allow-insecure-runtime",
        action="store_true",
        help="accept a build made WITHOUT gVisor (farm build --insecure-runtime)",
    )
    ver.set_defaults(func=cmd_verify)
    reap = sub.add_parser("reap", help="remove leftovers of crashed builds")
    reap.set_defaults(func=cmd_reap)

    def wanted(*names: str) -> bool:
        return command is None or command in names

    if wanted("observer"):
        _observer_parser(sub)
    if wanted("controller", "node-monitor"):
        _k8s_parsers(sub)
    if wanted("mirror"):
        from farm.mirror.command import add_parsers as add_mirror_parsers

        add_mirror_parsers(sub)
    if wanted("diff"):
        from farm.profiles.command import add_parsers as add_diff_parsers

        add_diff_parsers(sub)
    doc = sub.add_parser("doctor", help="check the host and say how to fix it")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=cmd_doctor)

    host = sub.add_parser("host", help="prepare this host").add_subparsers(required=True)
    hs = host.add_parser("setup", help="install docker, gVisor and mmdebstrap; start dockerd")
    hs.set_defaults(func=cmd_host_setup)
    if wanted("image"):
        _image_parsers(sub)
    return p


def _observer_parser(sub: Any) -> None:
    from farm.observe.daemon import ObserverPaths

    obs = sub.add_parser(
        "observer", help="serve gVisor's trace socket for every sandbox on this host"
    )
    obs.add_argument(
        "--socket",
        type=Path,
        default=ObserverPaths.socket,
        help="where runsc connects (default: %(default)s, as in /etc/farm/pod-init.json)",
    )
    obs.add_argument(
        "--spool",
        type=Path,
        default=ObserverPaths.spool,
        help="one file of events per sandbox (default: %(default)s)",
    )
    obs.add_argument(
        "--detach", action="store_true", help="run in the background; return once it serves"
    )
    obs.set_defaults(func=cmd_observer)


def _image_parsers(sub: Any) -> None:
    from farm import images  # the recipes and suites of `farm image build/export`

    image = sub.add_parser("image", help="farm's images").add_subparsers(required=True)
    ib = image.add_parser("build", help="build an image offline with mmdebstrap")
    ib.add_argument("name", choices=list(images.RECIPES))
    ib.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ib.add_argument("--mirror", help="Debian mirror URL (default: deb.debian.org)")
    ib.add_argument(
        "--suite",
        choices=images.SUITES,
        help="Debian suite of the rust image (docs/toolchains.md)",
    )
    ib.add_argument(
        "--wheelhouse", type=Path, help="farm and fetch images: wheels of farm and its dependencies"
    )
    ib.set_defaults(func=cmd_image_build)
    ie = image.add_parser("export", help="save an image to a tarball for ctr/docker load")
    ie.add_argument("name", choices=list(images.RECIPES))
    ie.add_argument("-o", "--output", type=Path, required=True)
    ie.add_argument("--suite", choices=images.SUITES, help="Debian suite of the rust/fetch image")
    ie.set_defaults(func=cmd_image_export)


def _k8s_parsers(sub: Any) -> None:
    from farm.k8s import names
    from farm.observe.daemon import ObserverPaths

    ctl = sub.add_parser(
        "controller", help="run the Kubernetes controller for Build resources (see docs)"
    )
    ctl.add_argument("--print-crd", action="store_true", help="print the Build CRD and exit")
    ctl.add_argument("--config", type=Path, help="ControllerConfig as YAML or JSON")
    ctl.add_argument("--kubeconfig", help="default: in-cluster, else ~/.kube/config")
    ctl.add_argument("--identity", default=socket.gethostname(), help="Lease holder name")
    ctl.add_argument("--metrics-port", type=int, default=9090)
    ctl.set_defaults(func=cmd_controller)
    mon = sub.add_parser("node-monitor", help="observe build pods on this node (DaemonSet)")
    mon.add_argument("--node", required=True, help="this node's name (downward API)")
    mon.add_argument("--socket", type=Path, default=ObserverPaths.socket)
    mon.add_argument("--spool", type=Path, default=ObserverPaths.spool)
    mon.add_argument("--kubeconfig")
    mon.add_argument("--metrics-port", type=int, default=9091)
    mon.add_argument(
        "--run-namespace",
        default=names.RUN_NAMESPACE,
        help="the controller's run_namespace: only its pods are build pods",
    )
    mon.set_defaults(func=cmd_node_monitor)


def cmd_controller(args: argparse.Namespace, settings: Settings) -> int:
    from farm.k8s import main as k8s

    if args.print_crd:
        print(k8s.crd_yaml(), end="")
        return int(ExitCode.OK)
    return k8s.run_controller(args, settings)


def cmd_node_monitor(args: argparse.Namespace, settings: Settings) -> int:
    from farm.k8s import main as k8s

    return k8s.run_node_monitor(args, settings)


def _spec_data(args: argparse.Namespace) -> dict[str, Any]:
    data = load_spec_file(args.spec) if args.spec else {}
    if args.path:
        data["source"] = args.path
    if "source" not in data:
        raise InputError("source: give a project directory, e.g. `farm build examples/hello-serde`")
    if args.build_argv:
        data["argv"] = args.build_argv
    env = dict(data.get("env") or {})
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--env {item!r}: use NAME=VALUE")
        env[name] = value
    data["env"] = env
    for key in ("image", "outputs", "timeout_seconds", "tenant"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    resources = dict(data.get("resources") or {})
    resources.update(
        {
            k: getattr(args, k)
            for k in ("cpus", "memory", "pids", "scratch", "disk")
            if getattr(args, k) is not None
        }
    )
    data["resources"] = resources
    if args.mode:
        data["observe"] = {**(data.get("observe") or {}), "mode": args.mode}
    return data


def _runner(
    settings: Settings, backend: Backend | None = None, store: Store | None = None, **kw: Any
) -> Runner:
    # The backend is imported late so `farm doctor` works even where docker-py breaks.
    from farm.backends.local import LocalBackend
    from farm.runner import Runner

    return Runner(settings, backend or LocalBackend(settings), store or Store(settings.home), **kw)


def _with_git_hosts(settings: Settings, hosts: list[str]) -> Settings:
    if not hosts:
        return settings
    merged = tuple(dict.fromkeys([*settings.git_hosts, *(h.lower() for h in hosts)]))
    return dataclasses.replace(settings, git_hosts=merged)


def _registry_choice(value: str | None, settings: Settings) -> tuple[Settings, Registry | None]:
    """``--registry``: a name the operator configured, or (the CLI user being the operator
    of a local build) a sparse index URL, added to this run's settings."""
    if value is None:
        return settings, None
    if value in settings.registries:
        return settings, settings.registries[value]
    from farm.fetch.registry import registry_from_cli

    registry = registry_from_cli(value)
    registries = {**settings.registries, registry.name: registry}
    return dataclasses.replace(settings, registries=registries), registry


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from farm.fetch.cache import CrateCache
    from farm.fetch.phase import fetch
    from farm.fetch.registry import Registry

    settings, registry = _registry_choice(args.registry, settings)
    settings = _with_git_hosts(settings, args.git_host)
    if args.dest.exists():
        raise InputError(f"--dest {args.dest}: already exists; give a new directory")
    within = args.within.resolve() if args.within else None
    result = fetch(
        Path(os.path.abspath(args.path)) if within else Path(args.path).resolve(),
        args.dest.resolve(),
        registry or Registry(),
        CrateCache(settings.crate_cache),
        within=within,
        say=lambda m: print(f"farm: {m}", file=sys.stderr),
        git_hosts=frozenset(settings.git_hosts),
    )
    if args.always_vendor and not result.mounts:
        from farm.ecosystems.cargo.vendor import Cargo

        mounts = Cargo().finish([], result.dest)
        result = result.model_copy(update={"mounts": [(m.source, m.target) for m in mounts]})
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return 0
    if not result.mounts:
        print("farm: nothing to fetch: no project farm knows (Cargo.toml)", file=sys.stderr)
    for p in result.packages:
        if p.commit:
            print(f"{p.name} {p.version} git:{p.commit} ({p.source})")
            continue
        print(f"{p.name} {p.version} sha256:{p.sha256} ({'cache' if p.cached else p.registry})")
    for source, target in result.mounts:
        print(f"mount {source} read-only at {target}")
    return 0


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    from farm.buildflow import validate_check

    data = _spec_data(args)
    server = args.server or (None if args.local else settings.server)
    if args.registry and server:
        if "://" in args.registry:
            raise InputError(
                "--registry: farm serve takes only the NAME of a registry its operator "
                "configured (farm serve --registries), never a URL"
            )
        data["registry"] = args.registry  # the server checks it is one of its own
    elif args.registry:
        settings, registry = _registry_choice(args.registry, settings)
        data["registry"] = registry.name if registry else None
    if args.git_host and server:
        raise InputError("--git-host: the operator of farm serve allows git hosts there")
    if args.layer and server:
        raise InputError("--layer: dependency layers are local-only for now; drop --layer")
    if args.resolve_lock and server:
        if args.resolve_lock != SERVER_MIRROR:
            raise InputError(
                "--resolve-lock: farm serve resolves against its operator's mirror (farm "
                "serve --resolve-mirror); drop MIRROR_DIR"
            )
    elif args.resolve_lock == SERVER_MIRROR:
        raise InputError("--resolve-lock: a local build needs MIRROR_DIR, a farm mirror directory")
    elif args.resolve_lock:
        if not (args.resolve_lock / "index").is_dir():
            raise InputError(
                f"--resolve-lock: {args.resolve_lock} is not a farm mirror (no index/); "
                "make one with `farm mirror create` and `farm mirror add`"
            )
        settings = dataclasses.replace(settings, resolve_mirror=args.resolve_lock.resolve())
    settings = _with_git_hosts(settings, args.git_host)
    spec = build_spec(data)  # bad input stops here: nothing created yet
    validate_check(args.check)
    if settings.insecure_runtime:
        print(
            f"farm: WARNING: --insecure-runtime={settings.insecure_runtime}: this build runs "
            "WITHOUT gVisor, on the host kernel. It is recorded in the build's record.",
            file=sys.stderr,
        )
    if args.observe and settings.insecure_runtime:
        raise InputError("--observe needs gVisor; drop --insecure-runtime")
    if server:
        return _build_remote(args, settings, spec, server)
    progress = _Progress(enabled=sys.stderr.isatty() and not args.follow)
    with _signals_raise(Interrupted), progress:
        try:
            outcome = _build_local(args, settings, spec, progress)
        except Interrupted:
            print("farm: interrupted; the sandbox was torn down", file=sys.stderr)
            return int(ExitCode.BUILD_FAILED)
    for line in outcome.said:
        print(f"farm: {line}", file=sys.stderr)
    _print_record(outcome.record, args.json, cached=outcome.cached)
    return _exit_code(outcome.record)


def _build_local(
    args: argparse.Namespace, settings: Settings, spec: BuildSpec, progress: _Progress
) -> Outcome:
    """The cache first, with no runner: a hit imports no sandbox machinery and asks
    dockerd only for the image's id. On a miss: reap crashed builds' leftovers, then build."""
    from farm.backends.local import LocalBackend
    from farm.buildflow import look_up, run_build

    backend, store = LocalBackend(settings), Store(settings.home)
    # A resolved lock depends on the mirror, which the cache key does not name.
    use_cache = not (args.no_cache or args.resolve_lock)
    looked = look_up(
        settings,
        store,
        backend,
        spec,
        check_runs=args.check,
        use_cache=use_cache,
        use_layer=args.layer,
    )
    if looked.hit:
        return looked.hit
    echo = (lambda b: (sys.stdout.buffer.write(b), sys.stdout.flush())) if args.follow else None
    runner = _runner(settings, backend, store, echo=echo, on_phase=progress.phase)
    for line in runner.reap_leftovers():
        print(f"farm: {line}", file=sys.stderr)
    return run_build(
        runner,
        spec,
        check_runs=args.check,
        use_cache=use_cache,
        use_layer=args.layer,
        looked=looked,
    )


def _exit_code(record: BuildRecord) -> int:
    verdict = record.reproducibility
    if verdict and not verdict.reproducible and record.status.exit_code == ExitCode.OK:
        return int(ExitCode.BUILD_FAILED)  # built, but not reproducibly: not a success
    return int(record.status.exit_code)


def _build_remote(args: argparse.Namespace, settings: Settings, spec: BuildSpec, url: str) -> int:
    """Submit to ``farm serve`` and wait: the same output and exit code as a local build."""
    from farm.client import Client

    local_only = {
        "--insecure-runtime": settings.insecure_runtime,
        "--[no-]observe": args.observe,
    }
    for flag, value in local_only.items():
        if value is not None:
            raise InputError(f"{flag}: the service decides this; drop it or pass --local")
    client = Client(url, settings.token)
    options = {"check": args.check, "no_cache": args.no_cache}
    if args.resolve_lock:
        options["resolve_lock"] = True
    view = client.submit({**spec.model_dump(mode="json", exclude_unset=True), **options})
    build_id, offset = view["id"], 0
    progress = _Progress(enabled=sys.stderr.isatty() and not args.follow)
    with _signals_raise(Interrupted), progress:
        try:
            while True:
                view = client.status(build_id)
                progress.phase(view["state"], None)
                if args.follow:
                    chunk = client.logs(build_id, offset)
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    offset += len(chunk)
                if view["state"] == "done":
                    break
                time.sleep(0.5)
        except Interrupted:
            client.cancel(build_id)
            print("farm: interrupted; the build was cancelled in the service", file=sys.stderr)
            return int(ExitCode.BUILD_FAILED)
    if view["summary"] is None:  # refused before a sandbox existed
        print(f"farm: error: {view['error']}", file=sys.stderr)
        return int(view["farm_exit_code"])
    record = client.report(build_id)
    if record.cached_from:
        print(f"farm: {record.notes[0]}", file=sys.stderr)
    _print_record(record, args.json, cached=record.cached_from is not None)
    return _exit_code(record)


class _signals_raise:
    """SIGINT/SIGTERM raise ``exc`` once in the main thread, so ``finally`` blocks tear
    the sandbox down; a second signal during teardown is ignored, not fatal."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc
        self.saved: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        for sig in self.saved:
            signal.signal(sig, signal.SIG_IGN)
        raise self.exc(signal.Signals(signum).name)

    def __enter__(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


class _Progress:
    """On a TTY: the phase, elapsed time and the log's last line, redrawn in place."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.name, self.log, self.start = "starting", None, time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._draw, daemon=True)

    def phase(self, name: str, log: CappedLog | None) -> None:
        self.name, self.log = name, log or self.log

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns
        while not self._stop.wait(0.5):
            tail = (self.log.tail() or [""])[-1] if self.log else ""
            line = f"[{self.name}] {time.monotonic() - self.start:6.1f}s  {tail}"
            sys.stderr.write("\r\x1b[2K" + line[: width - 1])
            sys.stderr.flush()
        sys.stderr.write("\r\x1b[2K")

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


def _print_record(record: BuildRecord, as_json: bool, cached: bool = False) -> None:
    if as_json:
        print(json.dumps({**record.summary(), "cached": cached}, indent=2))
        return
    print(
        f"build {record.id}: {record.status.value} (exit {record.exit_code}, "
        f"{record.duration_seconds}s, runtime {record.runtime})"
    )
    print(f"  image   {record.image} {record.image_id or ''}")
    print(f"  source  {record.source_digest}")
    for a in record.artifacts:
        print(f"  artifact {a.path}  sha256:{a.sha256}  {a.size} bytes")
    for note in record.notes:
        print(f"  note    {note}")
    if record.blocked_actions:
        from farm.observe.classify import BlockedAction
    for action in record.blocked_actions:
        line = BlockedAction.model_validate(action).line()
        print(f"  {'allowed' if action.get('allowed') else 'blocked'} {line}")
    if record.provenance_sha256:
        print(f"  provenance sha256:{record.provenance_sha256}  (farm provenance {record.id})")


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from farm.report import build_report, render

    server = args.server or (None if args.local else settings.server)
    if server:
        from farm.client import Client

        record = Client(server, settings.token).report(args.id)
    else:
        record = Store(settings.home).get(args.id)
    if args.cargo_vet:
        return _cargo_vet(record, args, settings, local=not server)
    report = build_report(record)
    print(report.model_dump_json(indent=2) if args.json else render(report))
    return 0


def _cargo_vet(
    record: BuildRecord, args: argparse.Namespace, settings: Settings, *, local: bool
) -> int:
    from farm import cargovet

    if not local:
        raise InputError(
            "--cargo-vet reads the build's Cargo.lock from this host's store; add --local"
        )
    store = Store(settings.home)
    lock = None
    if record.lockfile_sha256:
        lock = store.blob_path(record.lockfile_sha256).read_text(errors="replace")
    found = cargovet.evidence(record, lock)
    print(found.model_dump_json(indent=2) if args.json else cargovet.render(found))
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    records = Store(settings.home).list()
    if args.json:
        print(json.dumps([r.summary() for r in records], indent=2))
    for r in [] if args.json else records:
        print(
            f"{r.id}  {r.status.value:<10} {r.tenant:<12} {r.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{r.spec.get('source')}"
        )
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    record = Store(settings.home).get(args.id)
    if args.json:
        print(record.model_dump_json(indent=2))
    else:
        _print_record(record, as_json=False)
    return 0


def cmd_blocked(args: argparse.Namespace, settings: Settings) -> int:
    from farm.k8s.blocked import read, render

    actions = read(Store(settings.home), args.digest)
    if args.json:
        print(json.dumps([a.model_dump(mode="json") for a in actions], indent=2))
    else:
        print(render(actions))
    return 0


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.home)
    record = store.get(args.id)
    if record.log_sha256:
        with store.blob_path(record.log_sha256).open("rb") as fh:
            shutil.copyfileobj(fh, sys.stdout.buffer)
    return 0


def cmd_artifacts(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.home)
    record = store.get(args.id)
    for a in record.artifacts:
        dest = args.dest / a.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.blob_path(a.sha256), dest)
        dest.chmod(0o755)
        print(dest)
    return 0


def cmd_gc(args: argparse.Namespace, settings: Settings) -> int:
    from farm.cache import Cache
    from farm.gc import collect_garbage
    from farm.layers.store import LayerStore
    from farm.spec import parse_size

    if args.keep < 0:
        raise InputError(f"--keep {args.keep}: give 0 or more records to keep per tenant")
    try:
        bound = parse_size(args.cache_max_size)
    except ValueError as exc:
        raise InputError(f"--cache-max-size: {exc}") from None
    try:
        layers_bound = parse_size(args.layers_max_size)
    except ValueError as exc:
        raise InputError(f"--layers-max-size: {exc}") from None
    if args.layers_max_count < 0:
        raise InputError(f"--layers-max-count {args.layers_max_count}: give 0 or more")
    store = Store(settings.home)
    cache = Cache(settings.home, store)
    dropped, freed = cache.prune(bound)
    print(f"cache: dropped {dropped} entries ({freed} bytes of artifacts) to stay under {bound}")
    print(collect_garbage(store, settings, keep=args.keep, pinned=cache.build_ids()))
    gone, bytes_gone = LayerStore(settings.home).prune(layers_bound, args.layers_max_count)
    print(
        f"layers: dropped {gone} ({bytes_gone} bytes) to stay under {layers_bound} bytes "
        f"and {args.layers_max_count} layers"
    )
    return 0


def cmd_provenance(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.home)
    record = store.get(args.id)
    if not record.provenance_sha256:
        raise InputError(f"build {record.id} has no provenance (only succeeded builds do)")
    data = store.blob_path(record.provenance_sha256).read_bytes()
    if args.out:
        args.out.write_bytes(data)
        print(args.out)
    else:
        sys.stdout.buffer.write(data)
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from farm.signing import load_public_key, public_key_path
    from farm.verify import verify

    key = load_public_key(args.key or public_key_path(settings.home))
    lines = verify(
        args.artifact,
        args.provenance,
        key,
        args.require,
        allow_insecure_runtime=args.allow_insecure_runtime,
    )
    for line in lines:
        print(line)
    return 0


def cmd_reap(args: argparse.Namespace, settings: Settings) -> int:
    for line in _runner(settings).reap_leftovers() or ["nothing to reap"]:
        print(f"farm: {line}")
    return 0


def cmd_observer(args: argparse.Namespace, settings: Settings) -> int:
    from farm.observe.daemon import ObserverBusy, ObserverDaemon, ObserverPaths, detach

    logging.basicConfig(level=logging.INFO, format="%(asctime)s farm-observer: %(message)s")
    paths = ObserverPaths(socket=args.socket, spool=args.spool)
    if args.detach:
        return detach(paths)
    try:
        ObserverDaemon(paths).serve_forever()
    except ObserverBusy as exc:
        print(f"farm: {exc}", file=sys.stderr)
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from farm.host import diagnose

    checks = diagnose(settings)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    for c in [] if args.json else checks:
        print(
            f"{'ok ' if c.ok else 'MISSING'}  {c.name}: {c.detail}"
            + ("" if c.ok else f"\n         fix: {c.fix}")
        )
    return 0 if all(c.ok for c in checks) else int(ExitCode.INFRASTRUCTURE)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from farm.admission import Ceilings
    from farm.fetch.registry import load_registries
    from farm.httpserver import HttpLimits
    from farm.serve import ServeOptions, serve

    limits = {}
    for item in args.limit:
        tenant, sep, value = item.partition("=")
        if not sep or not TENANT_NAME.match(tenant) or not value.isdigit() or int(value) < 1:
            raise InputError(f"--limit {item!r}: use TENANT=N with N >= 1")
        limits[tenant] = int(value)
    if args.concurrency < 1 or (args.tenant_limit is not None and args.tenant_limit < 1):
        raise InputError("--concurrency and --tenant-limit must be at least 1")
    try:
        http = HttpLimits(
            timeout_seconds=args.http_timeout,
            max_connections=args.max_connections,
            max_waiting=args.max_waiting,
        )
    except ValidationError as exc:
        flags = {
            "timeout_seconds": "--http-timeout",
            "max_connections": "--max-connections",
            "max_waiting": "--max-waiting",
        }
        bad = [f"{flags[str(e['loc'][0])]}: {e['msg']}" for e in exc.errors()]
        raise InputError("; ".join(bad)) from None
    if args.registries:
        settings = dataclasses.replace(settings, registries=load_registries(args.registries))
    settings = _with_git_hosts(settings, args.git_host)
    options = ServeOptions(
        bind=args.bind,
        port=args.port,
        concurrency=args.concurrency,
        tenant_limit=args.tenant_limit or args.concurrency,
        limits=limits,
        tokens_file=args.tokens,
        source_root=(args.source_root or Path.cwd()).resolve(),
        ceilings=Ceilings.parse_items(args.ceiling, "--ceiling"),
        allowed_images=tuple(args.allow_image) if args.allow_image else None,
        http=http,
        resolve_mirror=args.resolve_mirror,
    )
    logging.basicConfig(level=logging.INFO, format="farm serve: %(message)s")
    serve(settings, options, say=lambda m: print(f"farm serve: {m}", file=sys.stderr, flush=True))
    return 0


def cmd_host_setup(args: argparse.Namespace, settings: Settings) -> int:
    from farm.host import setup

    setup(settings, log=lambda m: print(m, file=sys.stderr))
    return 0


def cmd_image_build(args: argparse.Namespace, settings: Settings) -> int:
    from farm.backends.local import LocalBackend
    from farm.images import build_image

    client = LocalBackend(settings).client
    info = build_image(
        args.name,
        settings,
        Store(settings.home),
        client,
        force=args.force,
        wheels=args.wheelhouse,
        mirror=args.mirror,
        suite=args.suite,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(json.dumps(info, indent=2))
    return 0


def cmd_image_export(args: argparse.Namespace, settings: Settings) -> int:
    from farm.backends.local import LocalBackend
    from farm.images import export_image

    info = export_image(args.name, args.output, LocalBackend(settings).client, args.suite)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``farm serve``: wire queue, service, API and metrics together and run until a signal.

Callers: ``farm.cli``. One service per ``$FARM_HOME`` (a lock file says so), because
crash recovery treats every ``running`` queue entry as an orphan. SIGTERM or SIGINT
stops the listener, cancels running builds (requeued, so a restart runs them again)
and returns once every sandbox is torn down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from farm.admission import Admission, Ceilings, ImageAllowlist
from farm.api import Api, check_bind, make_server
from farm.errors import InfrastructureError, InputError
from farm.httpserver import HttpLimits
from farm.logs import CappedLog
from farm.metrics import Metrics
from farm.mirror.layout import MANIFEST_FILE
from farm.observe.daemon import HostObserver
from farm.queue import Queue
from farm.runner import Runner
from farm.service import Service, SourcePolicy
from farm.settings import Settings
from farm.store import Store
from farm.tokens import load_tokens


@dataclass(frozen=True)
class ServeOptions:
    bind: str = "127.0.0.1"
    port: int = 8770
    concurrency: int = 2
    tenant_limit: int = 2
    limits: dict[str, int] = field(default_factory=dict)
    tokens_file: Path | None = None
    source_root: Path = Path("/nonexistent")
    #: The most a submitted spec may ask for (``--ceiling``); defaults in farm.admission.
    ceilings: Ceilings = field(default_factory=Ceilings)
    #: Image patterns builds may run (``--allow-image``); None: FARM_ALLOWED_IMAGES.
    allowed_images: tuple[str, ...] | None = None
    http: HttpLimits = field(default_factory=HttpLimits)
    #: ``--resolve-mirror``: the farm mirror a build asking ``resolve_lock`` is resolved
    #: against (farm.fetch.resolve); tenants may ask for it, never name a directory.
    resolve_mirror: Path | None = None


@contextlib.contextmanager
def _serve_lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InfrastructureError(
                f"another `farm serve` already uses FARM_HOME={home}; stop it or set FARM_HOME"
            ) from None
        yield
    finally:
        os.close(fd)


def serve(settings: Settings, options: ServeOptions, say: Callable[[str], None]) -> None:
    """Raises InputError for a bad option (before anything listens), InfrastructureError
    when dockerd or the port is unavailable."""
    tokens = load_tokens(options.tokens_file) if options.tokens_file else None
    check_bind(options.bind, tokens)
    if options.resolve_mirror is not None:
        options = dataclasses.replace(options, resolve_mirror=check_mirror(options.resolve_mirror))
    origin = "FARM_ALLOWED_IMAGES"
    if options.allowed_images is not None:
        # The workers' runners check the image again, against the same list.
        settings = dataclasses.replace(settings, allowed_images=options.allowed_images)
        origin = "--allow-image"
    images = ImageAllowlist.parse(settings.allowed_images, origin)
    admission = Admission(
        ceilings=options.ceilings,
        allowed_images=images,
        registries=frozenset(settings.registries),
    )
    with _serve_lock(settings.home):
        service = _service(settings, options, tokens is not None, admission)
        api = Api(service, service.store, settings.work_dir, tokens)
        try:
            server = make_server(api, options.bind, options.port, options.http)
        except OSError as exc:
            where = f"{options.bind}:{options.port}"
            raise InfrastructureError(f"cannot listen on {where}: {exc}") from None
        for line in service.start():
            say(line)
        host, port = server.server_address[:2]
        say(
            f"listening on http://{host}:{port} ({options.concurrency} workers, "
            f"{'bearer tokens' if tokens else 'no auth, loopback only'})"
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _wait_for_signal()
        say("stopping: running builds are cancelled and requeued")
        server.shutdown()
        server.server_close()
        service.stop()
        say("stopped")


def _service(
    settings: Settings, options: ServeOptions, tenants: bool, admission: Admission
) -> Service:
    from farm.backends.local import LocalBackend

    store = Store(settings.home)
    # One observer for all workers (it is thread-safe); it starts the host's observer
    # daemon on demand.
    observer = HostObserver() if settings.observing else None

    sources = SourcePolicy(options.source_root, per_tenant=tenants)

    def runner(on_phase: Callable[[str, CappedLog | None], None]) -> Runner:
        backend = LocalBackend(settings)
        return Runner(
            settings, backend, store, on_phase=on_phase, observer=observer, sources=sources
        )

    return Service(
        queue=Queue(settings.home / "index.sqlite", options.tenant_limit, options.limits),
        store=store,
        backend=LocalBackend(settings),
        runner_factory=runner,
        metrics=Metrics(CollectorRegistry()),
        sources=sources,
        concurrency=options.concurrency,
        admission=admission,
        resolve_mirror=options.resolve_mirror,
    )


def check_mirror(path: Path) -> Path:
    """``--resolve-mirror``: an existing farm mirror, as an absolute path. Raises
    InputError before anything listens."""
    if not (path / "index").is_dir() or not (path / MANIFEST_FILE).is_file():
        raise InputError(
            f"--resolve-mirror: {path} is not a farm mirror (no index/ and {MANIFEST_FILE}); "
            "make one with `farm mirror create` and fill it with `farm mirror add`"
        )
    return path.resolve()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    while not stop.wait(1):
        pass

"""The sinkhole resolver: names, not only addresses, for a build's network attempts.

Callers: ``farm.runner`` (:func:`prepare` before a build, :func:`read_log` and
:func:`merge` after it) and ``farm.backends.local.backstop`` (:func:`init_argv`, the
sandbox's pid 1 starting the resolver).

With no network a build that resolves a name fails before any connect, and the record
says little. So every sandbox gets a resolver on its own loopback (``127.0.0.1:53``,
through a read-only ``/etc/resolv.conf``): ``farm/data/sinkhole-resolver.pl``, core
Perl only, started by pid 1 (root in gVisor) with an empty environment. It binds, drops
to RESOLVER_UID (not the build's uid: the build can neither signal nor trace it), and
answers each A query with ``198.18.0.0/15`` + n and each AAAA with ``2001:2::n``
(ranges reserved for benchmarking; the sandbox has no route to them), one n per name.
Its log of n -> name is in a directory only its uid writes. After the build, a connect
to one of those addresses becomes ``resolve NAME → connect :PORT``, attributed like the
connect; a name nobody connected to is listed as a bare ``resolve NAME``.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from farm.sandbox import Mount, SandboxSpec

if TYPE_CHECKING:  # the local backend imports this module for its pid 1 argv only
    from farm.observe.classify import BlockedAction

#: Not the build's uid (farm.settings.SANDBOX_UID): the build cannot signal it.
RESOLVER_UID = 10002
ADDRESS, PORT = "127.0.0.1", 53
SCRIPT = "/farm/sinkhole-resolver.pl"
LOG_DIR = "/farm/dns"
RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n"
V4 = ipaddress.ip_network("198.18.0.0/15")
V6 = ipaddress.ip_network("2001:2::/48")
#: Bytes of the resolver's log farm reads (it holds at most 65536 names).
MAX_LOG = 8 << 20
#: How long the resolver may take to get ready; past it, the build starts while the
#: resolver keeps starting (its ``ready`` then says ``late``; the record says so and the
#: result is never cached: the names of queries sent before it bound are unknown).
READY_SECONDS = 5


def script_path() -> Path:
    return Path(str(resources.files("farm") / "data" / "sinkhole-resolver.pl"))


def init_argv(
    *,
    perl: str = "/usr/bin/perl",
    script: str = SCRIPT,
    port: int = PORT,
    log_dir: str = LOG_DIR,
    uid: int = RESOLVER_UID,
) -> list[str]:
    """pid 1's child (root, caps KILL/SETUID/SETGID/SETPCAP/NET_BIND_SERVICE): start
    the resolver, wait until it is ready, run ``"$@"`` (setpriv and the build's argv),
    then kill the resolver and exit with the build's status. Fixed text: nothing of the
    spec is interpolated, and the resolver gets an empty environment (no PERL5OPT).

    The wait is the command substitution's pipe: the resolver holds it as its stdout
    until it has bound the port and written its pid, then prints the pid and closes it
    (or exits, when it cannot start; or prints its pid alone and carries on starting,
    when it takes over READY_SECONDS). No polling: a fixed
    sleep loop put up to its interval, and a `sleep` exec per round, on every build.
    The keywords are the sandbox's paths; tests run the same text on the host."""
    start = f"/usr/bin/env -i {perl} {script} {ADDRESS} {port} {log_dir} {uid} {READY_SECONDS}"
    text = (
        f"ready=$({start} </dev/null 2>/dev/null &); r=${{ready%% *}}; "
        '"$@"; s=$?; [ -z "$r" ] || kill -KILL "$r" 2>/dev/null; exit "$s"'
    )
    return ["/bin/sh", "-c", text, "farm-init"]


def prepare(sandbox: SandboxSpec, root: Path, log_dir: Path) -> SandboxSpec:
    """``sandbox`` with the resolver's script, resolv.conf and log directory mounted.
    ``root`` is farm's own directory of the build; ``log_dir`` is on the build's capped
    filesystem (its size counts there), writable only by RESOLVER_UID."""
    conf = root / "resolv.conf"
    conf.write_text(RESOLV_CONF)
    log_dir.mkdir(mode=0o711)
    os.chmod(log_dir, 0o711)  # pid 1 (no DAC override) looks for ready; nobody else writes
    os.chown(log_dir, RESOLVER_UID, RESOLVER_UID)
    mounts = [
        Mount(source=script_path(), target=SCRIPT, read_only=True),
        Mount(source=conf, target="/etc/resolv.conf", read_only=True),
        Mount(source=log_dir, target=LOG_DIR, read_only=False),
    ]
    return sandbox.model_copy(update={"mounts": [*sandbox.mounts, *mounts], "sinkhole": True})


@dataclass
class Resolved:
    """What the resolver logged: its pid (None if it never got ready) and n -> name."""

    pid: int | None = None
    names: dict[int, str] = field(default_factory=dict)
    #: It got ready only after the build had started (READY_SECONDS).
    late: bool = False

    @property
    def ready(self) -> bool:
        """Ready before the build started: every query the build sent was logged."""
        return self.pid is not None and not self.late

    def problem(self) -> str | None:
        """Why the names of the build's lookups may be missing, or None."""
        if self.pid is None:
            return "the sinkhole resolver did not start (does the image have /usr/bin/perl?)"
        if self.late:
            return f"the sinkhole resolver was not ready within {READY_SECONDS} s"
        return None


def read_log(log_dir: Path) -> Resolved:
    """The resolver's files, read without following links and within MAX_LOG."""
    ready, names = _read(log_dir / "ready"), _read(log_dir / "names")
    fields = ready.split()
    pid = int(fields[0]) if fields and fields[0].isdigit() else None
    found = {}
    for line in names.splitlines():
        n, _, name = line.partition("\t")
        if n.isdigit() and name:
            found[int(n)] = name
    return Resolved(pid, found, late=fields[2:3] == ["late"])


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return ""
        return fh.read(MAX_LOG).decode("utf-8", "replace")


def index_of(address: str | None) -> int | None:
    """n for an address the resolver handed out, else None."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return None
    if ip in V4:
        return int(ip) - int(V4.network_address)
    if ip in V6:
        return int(ip) & 0xFFFFFFFF
    return None


def merge(actions: Iterable[BlockedAction], resolved: Resolved) -> Iterator[BlockedAction]:
    """The actions with the resolver's own left out, each connect to a sinkhole
    address named (``resolve NAME → connect :PORT``, attributed like the connect), and
    then a ``resolve NAME`` for each name no recorded connect followed, attributed to the
    process that queried the resolver when only one package's processes did.

    The ``dns query`` actions (``classify.iter_actions(dns_port=PORT)``) are consumed
    when the resolver was ready; otherwise a query's name may be unknown, so each stays
    a network action (the build did try the network)."""
    connected: set[int] = set()
    askers: dict[str, BlockedAction] = {}
    for action in actions:
        if resolved.pid is not None and action.pid == resolved.pid:
            continue  # the resolver's own replies (unconnected sendto) and its exit
        if action.operation == "dns query" and resolved.ready:
            if len(askers) < MAX_ASKERS:
                askers.setdefault(action.who(), action)
            continue
        n = index_of(action.address) if action.kind == "network" else None
        if n is None or n not in resolved.names:
            yield action
            continue
        if action.protocol == "udp" and not action.port:
            continue  # getaddrinfo's address-selection probe (RFC 6724): it sends nothing
        connected.add(n)
        target = f"{resolved.names[n]} → {action.operation} :{action.port}"
        yield action.model_copy(update={"operation": "resolve", "target": target})
    for n, name in sorted(resolved.names.items()):
        if n not in connected:
            yield _resolve_only(name, askers)


#: Distinct processes remembered as having queried the resolver.
MAX_ASKERS = 64


def _resolve_only(name: str, askers: dict[str, BlockedAction]) -> BlockedAction:
    """A name looked up with no connect after it. The resolver sees no process: if the
    queries came from one package's processes (or one process), the name is theirs."""
    if len(askers) == 1:
        asker = next(iter(askers.values()))
        update = {"operation": "resolve", "target": name, "errno": "", "address": None}
        return asker.model_copy(update={**update, "port": None, "protocol": None})
    from farm.observe.classify import BlockedAction

    who = ", ".join(sorted(askers)) or "no recorded process"
    return BlockedAction(
        kind="network",
        operation="resolve",
        target=name,
        errno="",
        time_ns=0,
        pid=0,
        process_name="sinkhole resolver",
        executable=f"(asked by one of: {who})"[:256],
        argv=[],
    )

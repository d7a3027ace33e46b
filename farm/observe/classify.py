"""Turn gVisor's trace events into typed ``BlockedAction`` records, each attributed to
the process, and (through its ecosystem's rules, farm.observe.processes) the package,
that tried it.

Callers: ``farm.runner`` after an observed build; ``farm.report`` and the CLI print the
records. Only what gVisor saw is used, never the build's own output, which the
attacker controls. Kinds (docs/observer.md has the exact rules):

- ``network``: connect/bind/send beyond the sandbox's own loopback;
- ``fs_write_denied``: a create, write, rename, unlink, chmod or link refused
  (EACCES, EROFS, EPERM), or a write-open outside the writable mounts of a path the
  sandbox does not have (ENOENT);
- ``privilege``: mount, unshare, setns, setuid/setgid to 0, chroot, ptrace, bpf, keyctl,
  module loading, raw or packet sockets, devices other than the harmless ones;
- ``sensitive_read``: an open of a well-known secret path, whatever its result;
- ``persistence``: a process still alive when the build command exited.
"""

from __future__ import annotations

import errno as errnos
import ipaddress
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from farm.observe.events import TraceEvent, in_time_order
from farm.observe.paths import Where, canonical
from farm.observe.points import RAW_FS_SYSCALLS, SockAddr
from farm.observe.processes import ARGV_CHARS, ARGV_ITEMS, Attribution, Process, ProcessTable
from farm.policy import OUT, TARGET, TMP

KINDS = ("network", "fs_write_denied", "privilege", "sensitive_read", "persistence")

#: Opens of these are ``sensitive_read`` whatever their result: the attempt is the tell.
#: Matched on the canonical path (farm.observe.paths: proc's aliases of a process are
#: ``/proc/<pid>``) and on the path as spelled.
SENSITIVE = re.compile(
    r"(/\.ssh/|/\.aws/|/\.docker/config\.json|/\.kube/config|/\.netrc|/\.git-credentials"
    r"|^/proc/\d+/environ$|^/proc/self/environ$|^/etc/shadow|^/etc/gshadow|/serviceaccount/token"
    r"|/\.config/gcloud/|/\.cargo/credentials|/\.gnupg/|/\.npmrc$|/\.pypirc$)"
)
HARMLESS_DEVICES = frozenset(
    {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
)
DENIED = frozenset({errnos.EACCES, errnos.EROFS, errnos.EPERM})
#: Errors that mean the sandbox refused the call (EHOSTUNREACH: farm.sinkhole's
#: addresses have no route), shown as "blocked".
REFUSED = ("EACCES", "EPERM", "EROFS", "ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH")
#: Where a build may write (farm.policy's mounts, plus the kernel's scratch dirs).
WRITABLE_ROOTS = (TARGET, OUT, TMP, "/dev/shm")
#: Open files remembered to resolve ``/proc/<pid>/fd/N`` (oldest forgotten first).
MAX_OPEN_FILES = 65536
O_ACCMODE, O_CREAT, O_TRUNC, O_APPEND = 0o3, 0o100, 0o1000, 0o2000
AT_FDCWD = -100
AF_UNIX, AF_NETLINK, AF_PACKET = 1, 16, 17
#: Sockets whose peer is this sandbox's own kernel or processes: sends on them are IPC.
LOCAL_DOMAINS = frozenset({AF_UNIX, AF_NETLINK})
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_PACKET = 1, 2, 3, 10
SEND_SYSCALLS = frozenset({"sendto", "sendmsg", "sendmmsg"})
#: What a send to an address the sandbox has no route to fails with.
UNROUTED = frozenset({errnos.ENETUNREACH, errnos.EHOSTUNREACH, errnos.EPERM, errnos.EACCES})
#: glibc asks nscd over this socket on every user lookup; it never leaves the sandbox.
BENIGN_UNIX = frozenset({"/var/run/nscd/socket", "/run/nscd/socket"})


#: What a raw syscall record lacks (gVisor gives its arguments as integers only).
_UNRECORDED = {
    "fs_write_denied": "(path not recorded by gVisor)",
    "network": "(address not recorded by gVisor)",
}


class BlockedAction(BaseModel):
    """One attempt gVisor recorded that the sandbox refused, contained, or that no build
    should make. ``errno`` is "" when the call succeeded inside the sandbox."""

    model_config = ConfigDict(frozen=True)

    kind: str
    operation: str
    #: A path is canonical (farm.observe.paths): allow rules match the object opened.
    target: str
    errno: str
    time_ns: int
    pid: int
    process_name: str
    executable: str
    argv: list[str]
    cwd: str = ""
    package: str | None = None
    version: str | None = None
    #: "build script", "proc macro", "rustc" or "other".
    role: str = "other"
    #: The package rustc was compiling (for roles "rustc" and "proc macro").
    compiling: str | None = None
    #: Role "proc macro": every macro package its rustc had loaded by then. Code of any
    #: of them may have made the call, so an allow rule's ``package`` must match all.
    suspects: list[str] = Field(default_factory=list)
    #: Network actions: address family, host, port and protocol.
    family: str | None = None
    address: str | None = None
    port: int | None = None
    protocol: str | None = None
    #: The path exactly as the process passed it, when it is not ``target``'s spelling
    #: (``/proc/self/root/etc/shadow`` for ``/etc/shadow``).
    spelled: str | None = None
    #: Set by the build's policy: allowed actions never quarantine a build.
    allowed: bool = False
    #: farm.honeytokens: the kind of planted credential this read opened; the kinds
    #: whose value this action's text held (then redacted); "high" for either.
    honeytoken: str | None = None
    exfiltrated: str | None = None
    severity: str | None = None

    def who(self) -> str:
        if not self.package:
            return self.executable or self.process_name or f"pid {self.pid}"
        role = self.role
        if self.role == "proc macro" and self.compiling:
            role = f"proc macro, compiling {self.compiling}"
        others = [s for s in self.suspects if s != self.package]
        if others:  # any loaded macro's code may have made the call
            role += f"; or {', '.join(others)}"
        return f"{self.package} {self.version or '?'} ({role})"

    def what(self) -> str:
        """``connect 127.0.0.1:443/tcp blocked (ECONNREFUSED)``."""
        target = self.target or _UNRECORDED.get(self.kind, "")
        if self.spelled:
            target = f"{target} (as {self.spelled})"
        if self.protocol and self.port is not None:
            target = f"{target}/{self.protocol}"
        elif self.protocol and not self.target:
            target = f"{self.protocol} {target}"
        said = " ".join(w for w in (self.operation, target, self.result()) if w)
        if self.honeytoken:
            said += f" [honeytoken {self.honeytoken}: severity high]"
        if self.exfiltrated:
            said += f" [EXFILTRATION of honeytoken {self.exfiltrated}]"
        return said

    def result(self) -> str:
        if self.errno == "EINPROGRESS":  # a non-blocking connect; nothing listens here
            return "attempted (EINPROGRESS)"
        if self.errno:
            refused = self.errno in REFUSED
            return f"{'blocked' if refused else 'failed'} ({self.errno})"
        return {
            "persistence": "killed with the sandbox",
            "network": "contained (nothing outside the sandbox is reachable)",
            "privilege": "contained by gVisor",
        }.get(self.kind, "succeeded inside the sandbox")

    def line(self) -> str:
        return f"{self.who()}: {self.what()}"


@dataclass(frozen=True)
class _Found:
    kind: str
    operation: str
    target: str
    net: SockAddr | None = None
    protocol: str | None = None
    #: The path as the process spelled it, when that differs from ``target``.
    spelled: str | None = None


@dataclass
class _Sockets:
    """What the sandbox did with sockets, to tell its own loopback from the outside."""

    #: (tgid, fd) -> (domain, type) from successful socket() calls.
    kinds: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    #: (tgid, fd) of sockets whose connect was already judged.
    connected: set[tuple[int, int]] = field(default_factory=set)
    #: Loopback ports some process of this sandbox bound.
    bound: set[int] = field(default_factory=set)
    #: farm.sinkhole's resolver port: a UDP connect there is a ``dns query`` action.
    dns_port: int | None = None
    #: (tgid, fd) of UDP sockets connected to that resolver.
    resolver: set[tuple[int, int]] = field(default_factory=set)


def classify(events: Iterable[TraceEvent], versions: dict[str, str]) -> list[BlockedAction]:
    """Every blocked or suspicious action in ``events`` (one sandbox), in time order.
    For a small record; a spooled one goes through :func:`iter_actions`."""
    return list(iter_actions(events, versions))


def iter_actions(
    events: Iterable[TraceEvent], versions: dict[str, str], *, dns_port: int | None = None
) -> Iterator[BlockedAction]:
    """:func:`classify` as a stream: memory stays bounded whatever the number of events
    (only the process and socket tables grow, with processes and sockets).

    ``dns_port``: the sandbox runs farm.sinkhole's resolver on that loopback port; each
    UDP connect to it is yielded as a ``dns query`` action, for farm.sinkhole.merge to
    attribute names to (it consumes them: they are not attempts to leave the sandbox)."""
    table = ProcessTable(versions)
    sockets = _Sockets(dns_port=dns_port)
    files: dict[tuple[int, int], str] = {}
    for event in in_time_order(events):
        table.track(event)
        found = _judge(event, sockets, files)
        if found:
            yield _action(event, found, table)
    for proc in table.survivors():
        yield _persistence(proc, table)


def _capped(argv: list[str]) -> list[str]:
    return [arg[:ARGV_CHARS] for arg in argv[:ARGV_ITEMS]]


def _judge(event: TraceEvent, sockets: _Sockets, files: dict) -> _Found | None:
    """What the event is, if it is a blocked or suspicious action."""
    f, kind = event.fields, event.kind
    if kind == "open":
        return _judge_open(event, files)
    if kind == "socket":
        return _judge_socket(event, sockets)
    if kind in ("connect", "bind"):
        return _judge_address(event, sockets)
    # proto3 omits zeros: an absent id *is* uid/gid 0.
    if kind == "setid" and f.get("id", 0) == 0:
        return _Found("privilege", _setid_name(event), "uid/gid 0")
    if kind == "setresid" and 0 in (f.get("rid", 0), f.get("eid", 0), f.get("sid", 0)):
        return _Found("privilege", _setid_name(event), "uid/gid 0")
    if kind == "chroot":
        return _Found("privilege", "chroot", _path(event))
    if kind == "syscall" and "exit" in f:  # raw points: enter and exit both arrive
        return _judge_raw(event, sockets)
    return None


def _setid_name(event: TraceEvent) -> str:
    return {105: "setuid", 106: "setgid", 117: "setresuid", 119: "setresgid"}.get(
        event.sysno, event.kind
    )


def _path(event: TraceEvent) -> str:
    """The event's pathname made absolute with its dirfd's path or the cwd, and
    otherwise as spelled (farm.observe.paths.canonical normalises it)."""
    path = str(event.fields.get("pathname", ""))
    if not path or path.startswith("/"):
        return path
    base = event.fields.get("fd_path", "") if event.fields.get("fd", AT_FDCWD) != AT_FDCWD else ""
    base = base or event.context.cwd
    return posixpath.join(base, path) if base.startswith("/") else path


def _judge_open(event: TraceEvent, files: dict[tuple[int, int], str]) -> _Found | None:
    """Judge an open by the object it names, whatever the spelling (farm.observe.paths);
    remember what a successful open's fd refers to."""
    spelled, tgid = _path(event), event.context.thread_group_id
    path = canonical(spelled, Where(tgid, event.context.cwd or "/", files))
    fd = int(event.fields.get("exit", {}).get("result", -1))
    if fd >= 0 and not event.errno and path.startswith("/"):
        files.pop((tgid, fd), None)  # re-inserted last: the newest is forgotten last
        files[(tgid, fd)] = path
        if len(files) > MAX_OPEN_FILES:
            del files[next(iter(files))]
    found = _judge_path(path, spelled, int(event.fields.get("flags", 0)), event.errno, tgid)
    if found and spelled != path:
        return _Found(found.kind, found.operation, path, spelled=spelled)
    return found


def _judge_path(path: str, spelled: str, flags: int, err: int, tgid: int) -> _Found | None:
    if SENSITIVE.search(path) or SENSITIVE.search(spelled):
        return _Found("sensitive_read", "open", path)
    if (
        path.startswith("/dev/")
        and path not in HARMLESS_DEVICES
        and not path.startswith(("/dev/pts/", "/dev/shm/"))
    ):
        return _Found("privilege", "open device", path)
    writes = (flags & O_ACCMODE) != 0 or flags & (O_CREAT | O_TRUNC | O_APPEND)
    if writes and err in DENIED:
        return _Found("fs_write_denied", "open for write", path)
    # Outside the writable mounts a missing directory means a host path the sandbox
    # does not have (a build writes only under them): the attempt is the tell.
    if writes and err == errnos.ENOENT and path.startswith("/") and not _writable(path, tgid):
        return _Found("fs_write_denied", "open for write", path)
    return None


def _writable(path: str, tgid: int) -> bool:
    roots = (*WRITABLE_ROOTS, f"/proc/{tgid}")  # its own proc files (/proc/self)
    return any(path == root or path.startswith(root + "/") for root in roots)


def _judge_socket(event: TraceEvent, sockets: _Sockets) -> _Found | None:
    domain, type_ = int(event.fields.get("domain", 0)), int(event.fields.get("type", 0)) & 0xF
    if not event.errno:
        fd = int(event.fields.get("exit", {}).get("result", -1))
        fd_key = (event.context.thread_group_id, fd)
        sockets.kinds[fd_key] = (domain, type_)
        sockets.connected.discard(fd_key)  # a reused fd number: a new socket
    # glibc's getaddrinfo opens a raw netlink socket to list addresses: it talks to
    # gVisor's kernel only, so it is no raw network access.
    if domain == AF_PACKET or (domain != AF_NETLINK and type_ in (SOCK_RAW, SOCK_PACKET)):
        return _Found("privilege", "raw socket", f"domain {domain} type {type_}")
    return None


def _protocol(domain_type: tuple[int, int] | None) -> str | None:
    if domain_type is None:
        return None
    return {SOCK_STREAM: "tcp", SOCK_DGRAM: "udp"}.get(domain_type[1], f"type{domain_type[1]}")


def _judge_address(event: TraceEvent, sockets: _Sockets) -> _Found | None:
    addr = event.sockaddr()
    fd_key = (event.context.thread_group_id, int(event.fields.get("fd", -1)))
    if addr is None:
        return None
    protocol = _protocol(sockets.kinds.get(fd_key))
    if addr.family == "unix":
        if event.kind == "bind" or addr.path in BENIGN_UNIX:
            return None
        sockets.connected.add(fd_key)
        return _Found("network", "connect", addr.path, addr, "unix")
    if addr.family not in ("inet", "inet6"):  # netlink and the like: local to the kernel
        return None if event.kind == "bind" else _Found("network", "connect", addr.family)
    loopback = _is_loopback(addr.host)
    if event.kind == "bind":
        if loopback:
            if addr.port and not event.errno:
                sockets.bound.add(addr.port)
            return None
        return _Found("network", "bind", _hostport(addr), addr, protocol)
    sockets.connected.add(fd_key)
    dns = sockets.dns_port is not None and addr.port == sockets.dns_port
    if loopback and dns and protocol == "udp":
        sockets.resolver.add(fd_key)
        return _Found("network", "dns query", _hostport(addr), addr, protocol)
    if loopback and _own_loopback(event, addr, protocol, sockets):
        return None
    return _Found("network", "connect", _hostport(addr), addr, protocol)


def _own_loopback(
    event: TraceEvent, addr: SockAddr, protocol: str | None, sockets: _Sockets
) -> bool:
    """True if a loopback connect reached (or may reach) a service of this sandbox:
    a TCP connect that succeeded, or any connect to a port the sandbox bound."""
    if addr.port in sockets.bound:
        return True
    return protocol != "udp" and not event.errno


def _is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _hostport(addr: SockAddr) -> str:
    host = f"[{addr.host}]" if addr.family == "inet6" else addr.host
    return f"{host}:{addr.port}"


def _judge_raw(event: TraceEvent, sockets: _Sockets) -> _Found | None:
    name = event.syscall_name
    if event.sysno in RAW_FS_SYSCALLS:
        return _Found("fs_write_denied", name, "") if event.errno in DENIED else None
    if name in SEND_SYSCALLS:
        fd_key = (event.context.thread_group_id, int(event.fields.get("arg1", -1)))
        domain_type = sockets.kinds.get(fd_key)
        # Only sendto's 5th argument is an address (sendmsg/sendmmsg carry theirs inside
        # the message, which gVisor does not record; their 5th register is noise).
        addressed = name == "sendto" and event.fields.get("arg5")
        to_peer = fd_key in sockets.connected and not addressed
        if fd_key in sockets.resolver and event.errno in UNROUTED:
            # The resolver always takes a datagram sent to it; one that found no route
            # carried an address of its own (sendmsg's msg_name, which gVisor does not
            # record): a send elsewhere hidden behind the connect to the resolver.
            return _Found("network", name, "", None, _protocol(domain_type))
        if to_peer or (domain_type and domain_type[0] in LOCAL_DOMAINS):
            return None  # judged at its connect (no address of its own), or local IPC
        return _Found("network", name, "", None, _protocol(domain_type))
    return _Found("privilege", name, "")


def _base(event: TraceEvent, proc: Process, who: Attribution) -> dict:
    err = event.errno
    return {
        "errno": errnos.errorcode.get(err, str(err)) if err else "",
        "time_ns": event.context.time_ns,
        "pid": event.context.thread_group_id,
        "process_name": event.context.process_name,
        "executable": proc.executable,
        "argv": _capped(proc.argv),
        "cwd": event.context.cwd[:ARGV_CHARS],
        "package": who.package,
        "version": who.version,
        "role": who.role,
        "compiling": who.compiling,
        "suspects": list(who.suspects),
    }


def _action(event: TraceEvent, found: _Found, table: ProcessTable) -> BlockedAction:
    tgid = event.context.thread_group_id
    base = _base(event, table.get(tgid), table.attribute(tgid, event.context.time_ns))
    net = {}
    if found.net is not None:
        net = {
            "family": found.net.family,
            "address": found.net.host or found.net.path,
            "port": found.net.port if found.net.family in ("inet", "inet6") else None,
        }
    return BlockedAction(
        kind=found.kind,
        operation=found.operation,
        target=found.target,
        spelled=found.spelled,
        protocol=found.protocol,
        **net,
        **base,
    )


def _persistence(proc: Process, table: ProcessTable) -> BlockedAction:
    who = table.attribute(proc.tgid, proc.start_ns)
    return BlockedAction(
        kind="persistence",
        operation="outlived the build:",
        target=" ".join(proc.argv)[:200] or proc.executable,
        errno="",
        time_ns=table.root_exit_ns or proc.start_ns,
        pid=proc.tgid,
        process_name=_basename(proc.executable),
        executable=proc.executable,
        argv=_capped(proc.argv),
        package=who.package,
        version=who.version,
        role=who.role,
        compiling=who.compiling,
        suspects=list(who.suspects),
    )


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]

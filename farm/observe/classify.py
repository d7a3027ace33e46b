"""Turn gVisor's trace events into typed ``BlockedAction`` records, each attributed to
the process, and for cargo the package, that tried it.

Callers: ``farm.runner`` after an observed build. Only what gVisor saw is used, never
the build's own output, which the attacker controls.
"""

from __future__ import annotations

import errno as errnos
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from farm.observe.events import TraceEvent

#: Opens of these are ``sensitive_read`` whatever their result: the attempt is the tell.
SENSITIVE = re.compile(
    r"(/\.ssh/|/\.aws/|/\.docker/config\.json|/\.kube/config|/\.netrc|/\.git-credentials"
    r"|^/proc/1/environ$|^/etc/shadow|^/etc/gshadow|/serviceaccount/token"
    r"|/\.config/gcloud/|/\.cargo/credentials)"
)
HARMLESS_DEVICES = frozenset(
    {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
)
DENIED = frozenset({errnos.EACCES, errnos.EROFS, errnos.EPERM})
BUILD_SCRIPT = re.compile(r"/build/(?P<pkg>[^/]+)-(?P<hash>[0-9a-f]{16})/build-script-build$")
O_ACCMODE, O_CREAT, O_TRUNC, O_APPEND = 0o3, 0o100, 0o1000, 0o2000
SOCK_RAW, SOCK_PACKET, AF_PACKET = 3, 10, 17


class BlockedAction(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str  # network, fs_write_denied, privilege, sensitive_read
    operation: str
    target: str
    errno: str
    time_ns: int
    pid: int
    process_name: str
    executable: str
    argv: list[str]
    package: str | None = None
    version: str | None = None
    role: str = "other"  # build script, rustc, other

    def line(self) -> str:
        who = self.executable or self.process_name
        if self.package:
            who = f"{self.package} {self.version or '?'} ({self.role})"
        result = f"failed ({self.errno})" if self.errno else "attempted"
        target = self.target or "(address not recorded by gVisor)"
        return f"{who}: {self.kind}: {self.operation} {target} {result}"


@dataclass
class _Process:
    executable: str = ""
    argv: list[str] = field(default_factory=list)


def lock_versions(source: Path) -> dict[str, str]:
    """Package name -> version from Cargo.lock, where the name is unambiguous."""
    try:
        packages = tomllib.loads((source / "Cargo.lock").read_text()).get("package", [])
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    seen: dict[str, list[str]] = {}
    for p in packages:
        seen.setdefault(p.get("name", ""), []).append(p.get("version", ""))
    return {name: versions[0] for name, versions in seen.items() if len(versions) == 1}


def classify(events: list[TraceEvent], versions: dict[str, str]) -> list[BlockedAction]:
    processes: dict[int, _Process] = {}
    actions = []
    for event in sorted(events, key=lambda e: e.context.time_ns):
        _track(processes, event)
        found = _judge(event)
        if found:
            proc = processes.get(event.context.thread_group_id, _Process())
            actions.append(_action(event, proc, versions, *found))
    return actions


def _track(processes: dict[int, _Process], event: TraceEvent) -> None:
    tgid = event.context.thread_group_id
    if event.kind == "clone":
        child = event.fields.get("created_thread_group_id", 0)
        parent = processes.get(tgid, _Process())
        processes.setdefault(child, _Process(parent.executable, list(parent.argv)))
    elif event.kind == "exec":
        processes[tgid] = _Process(
            event.fields.get("binary_path", ""), event.fields.get("argv", [])
        )


def _judge(event: TraceEvent) -> tuple[str, str, str] | None:
    """(kind, operation, target) when the event is a blocked or suspicious action."""
    f = event.fields
    if event.kind == "open":
        return _judge_open(str(f.get("pathname", "")), int(f.get("flags", 0)), event.errno)
    if event.kind in ("connect", "bind", "socket"):
        return _judge_network(event)
    if event.kind in ("setid", "setresid") and 0 in (f.get("id", 1), f.get("eid", 1)):
        return ("privilege", event.kind, "uid/gid 0")
    if event.kind == "chroot":
        return ("privilege", "chroot", str(f.get("pathname", "")))
    if event.kind == "syscall" and "exit" in f:  # raw points: enter and exit both arrive
        name = event.syscall_name
        return ("network", name, "") if name.startswith("send") else ("privilege", name, "")
    return None


def _judge_open(path: str, flags: int, err: int) -> tuple[str, str, str] | None:
    if SENSITIVE.search(path):
        return ("sensitive_read", "open", path)
    if (
        path.startswith("/dev/")
        and path not in HARMLESS_DEVICES
        and not path.startswith(("/dev/fd/", "/dev/pts/", "/dev/shm/", "/dev/std"))
    ):
        return ("privilege", "open device", path)
    writes = (flags & O_ACCMODE) != 0 or flags & (O_CREAT | O_TRUNC | O_APPEND)
    if writes and err in DENIED:
        return ("fs_write_denied", "open for write", path)
    return None


def _judge_network(event: TraceEvent) -> tuple[str, str, str] | None:
    f = event.fields
    if event.kind == "socket":
        if f.get("domain") == AF_PACKET or (f.get("type", 0) & 0xF) in (SOCK_RAW, SOCK_PACKET):
            return ("privilege", "raw socket", f"domain {f.get('domain')}")
        return None
    addr = event.sockaddr()
    if addr is None or addr.family not in ("inet", "inet6"):
        return None
    if ipaddress.ip_address(addr.host).is_loopback:
        return None  # the sandbox's own loopback: nothing leaves it
    return ("network", event.kind, f"{addr.host}:{addr.port}")


def _action(
    event: TraceEvent, proc: _Process, versions: dict[str, str], kind: str, op: str, target: str
) -> BlockedAction:
    package, role = None, "other"
    if m := BUILD_SCRIPT.search(proc.executable):
        package, role = m.group("pkg"), "build script"
    elif proc.executable.endswith("/rustc"):
        role = "rustc"
    err = event.errno
    return BlockedAction(
        kind=kind,
        operation=op,
        target=target,
        errno=errnos.errorcode.get(err, str(err)) if err else "",
        time_ns=event.context.time_ns,
        pid=event.context.thread_group_id,
        process_name=event.context.process_name,
        executable=proc.executable,
        argv=proc.argv,
        package=package,
        version=versions.get(package or ""),
        role=role,
    )

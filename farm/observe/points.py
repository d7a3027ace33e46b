"""What gVisor's trace points send: message types, field tables, and the points farm enables.

Callers: ``farm.observe.sink`` (decodes each datagram with :data:`MESSAGES`, builds the
``--pod-init-config`` from :data:`DEFAULT_POINTS`) and the observer's classifiers,
which read the decoded dicts and :func:`parse_sockaddr` / :data:`RAW_SYSCALLS`.

The field numbers are gVisor's ``pkg/sentry/seccheck/points/{common,syscall,sentry,
container}.proto``. They were checked against the descriptors embedded in runsc
0.0~20240729 and against Debian's golang-gvisor-gvisor-dev 0.0~20221219: both are
identical (see docs/observer.md). Only the messages farm uses are listed; a message
type missing here is still delivered, with empty fields.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from farm.observe.wire import Field, Schema


class MessageType(IntEnum):
    """``gvisor.common.MessageType``: the header's message type (subset farm decodes)."""

    CONTAINER_START = 1
    SENTRY_CLONE = 2
    SENTRY_EXEC = 3
    SENTRY_EXIT_NOTIFY_PARENT = 4
    SENTRY_TASK_EXIT = 5
    SYSCALL_RAW = 6
    SYSCALL_OPEN = 7
    SYSCALL_CLOSE = 8
    SYSCALL_READ = 9
    SYSCALL_CONNECT = 10
    SYSCALL_EXECVE = 11
    SYSCALL_SOCKET = 12
    SYSCALL_CHDIR = 13
    SYSCALL_SETID = 14
    SYSCALL_SETRESID = 15
    SYSCALL_CHROOT = 21
    SYSCALL_BIND = 24
    SYSCALL_WRITE = 34


HANDSHAKE: Schema = {1: Field("version", "uint32")}

CREDENTIALS: Schema = {
    1: Field("real_uid", "uint32"),
    2: Field("effective_uid", "uint32"),
    3: Field("saved_uid", "uint32"),
    4: Field("real_gid", "uint32"),
    5: Field("effective_gid", "uint32"),
    6: Field("saved_gid", "uint32"),
}

CONTEXT_DATA: Schema = {
    1: Field("time_ns", "int64"),
    2: Field("thread_id", "int32"),
    3: Field("thread_start_time_ns", "int64"),
    4: Field("thread_group_id", "int32"),
    5: Field("thread_group_start_time_ns", "int64"),
    6: Field("container_id", "string"),
    7: Field("credentials", "message", message=CREDENTIALS),
    8: Field("cwd", "string"),
    9: Field("process_name", "string"),
}

EXIT: Schema = {1: Field("result", "int64"), 2: Field("errorno", "int64")}

_CTX = Field("context_data", "message", message=CONTEXT_DATA)
_EXIT = Field("exit", "message", message=EXIT)
_SYSNO = Field("sysno", "uint64")
# Every syscall message opens with context_data=1, exit=2, sysno=3 (raw Syscall: sysno=4).
_SYSCALL_HEAD: Schema = {1: _CTX, 2: _EXIT, 3: _SYSNO}
_FD = {4: Field("fd", "int64"), 5: Field("fd_path", "string")}
# bind's fd is int32 where connect's is int64; both decode to the same Python int.
_FD32 = {4: Field("fd", "int32"), 5: Field("fd_path", "string")}


def _syscall(*parts: Schema) -> Schema:
    merged: dict[int, Field] = dict(_SYSCALL_HEAD)
    for part in parts:
        merged.update(part)
    return merged


CONTAINER_START: Schema = {
    1: _CTX,
    2: Field("id", "string"),
    3: Field("cwd", "string"),
    4: Field("args", "string", repeated=True),
    5: Field("env", "string", repeated=True),
    6: Field("terminal", "bool"),
}
SENTRY_CLONE: Schema = {
    1: _CTX,
    3: Field("created_thread_id", "int32"),
    4: Field("created_thread_group_id", "int32"),
    5: Field("created_thread_start_time_ns", "int64"),
    6: Field("flags", "uint64"),
}
SENTRY_EXEC: Schema = {
    1: _CTX,
    2: Field("binary_path", "string"),
    3: Field("argv", "string", repeated=True),
    4: Field("env", "string", repeated=True),
    5: Field("binary_mode", "uint32"),
    6: Field("binary_uid", "uint32"),
    7: Field("binary_gid", "uint32"),
    8: Field("binary_sha256", "bytes"),
}
SENTRY_EXIT: Schema = {1: _CTX, 2: Field("exit_status", "int32")}
RAW_SYSCALL: Schema = {
    1: _CTX,
    2: _EXIT,
    4: _SYSNO,
    **{4 + i: Field(f"arg{i}", "uint64") for i in range(1, 7)},
}
OPEN = _syscall(
    _FD, {6: Field("pathname", "string"), 7: Field("flags", "uint32"), 8: Field("mode", "uint32")}
)
CLOSE = _syscall(_FD)
READ_WRITE = _syscall(
    _FD,
    {
        6: Field("count", "uint64"),
        7: Field("has_offset", "bool"),
        8: Field("offset", "int64"),
        9: Field("flags", "uint32"),
    },
)
CONNECT = _syscall(_FD, {6: Field("address", "bytes")})
BIND = _syscall(_FD32, {6: Field("address", "bytes")})
EXECVE = _syscall(
    _FD,
    {
        6: Field("pathname", "string"),
        7: Field("argv", "string", repeated=True),
        8: Field("envv", "string", repeated=True),
        9: Field("flags", "uint32"),
    },
)
SOCKET = _syscall(
    {4: Field("domain", "int32"), 5: Field("type", "int32"), 6: Field("protocol", "int32")}
)
CHDIR = _syscall(_FD, {6: Field("pathname", "string")})
SETID = _syscall({4: Field("id", "uint32")})
SETRESID = _syscall(
    {4: Field("rid", "uint32"), 5: Field("eid", "uint32"), 6: Field("sid", "uint32")}
)
CHROOT = _syscall({4: Field("pathname", "string")})

#: Message type -> (event kind, schema). The kind is farm's short name for the message.
MESSAGES: dict[int, tuple[str, Schema]] = {
    MessageType.CONTAINER_START: ("container_start", CONTAINER_START),
    MessageType.SENTRY_CLONE: ("clone", SENTRY_CLONE),
    MessageType.SENTRY_EXEC: ("exec", SENTRY_EXEC),
    MessageType.SENTRY_EXIT_NOTIFY_PARENT: ("exit_notify_parent", SENTRY_EXIT),
    MessageType.SENTRY_TASK_EXIT: ("task_exit", SENTRY_EXIT),
    MessageType.SYSCALL_RAW: ("syscall", RAW_SYSCALL),
    MessageType.SYSCALL_OPEN: ("open", OPEN),
    MessageType.SYSCALL_CLOSE: ("close", CLOSE),
    MessageType.SYSCALL_READ: ("read", READ_WRITE),
    MessageType.SYSCALL_WRITE: ("write", READ_WRITE),
    MessageType.SYSCALL_CONNECT: ("connect", CONNECT),
    MessageType.SYSCALL_EXECVE: ("execve", EXECVE),
    MessageType.SYSCALL_SOCKET: ("socket", SOCKET),
    MessageType.SYSCALL_CHDIR: ("chdir", CHDIR),
    MessageType.SYSCALL_SETID: ("setid", SETID),
    MessageType.SYSCALL_SETRESID: ("setresid", SETRESID),
    MessageType.SYSCALL_CHROOT: ("chroot", CHROOT),
    MessageType.SYSCALL_BIND: ("bind", BIND),
}

#: x86-64 syscalls that gVisor offers only as raw ``syscall/sysno/N`` points (six
#: integer args, no strings) and that a build has no business making.
RAW_SYSCALLS: dict[int, str] = {
    44: "sendto",
    46: "sendmsg",
    101: "ptrace",
    155: "pivot_root",
    165: "mount",
    166: "umount2",
    175: "init_module",
    176: "delete_module",
    250: "keyctl",
    272: "unshare",
    307: "sendmmsg",
    308: "setns",
    313: "finit_module",
    321: "bpf",
}

#: x86-64 file syscalls that change the tree, also raw-only in gVisor: a build makes
#: them all the time, so only their *failure* with EACCES/EROFS/EPERM is news. Their
#: paths are pointers gVisor does not resolve, so the record has no path.
RAW_FS_SYSCALLS: dict[int, str] = {
    76: "truncate",
    82: "rename",
    83: "mkdir",
    84: "rmdir",
    86: "link",
    87: "unlink",
    88: "symlink",
    90: "chmod",
    92: "chown",
    258: "mkdirat",
    263: "unlinkat",
    264: "renameat",
    265: "linkat",
    266: "symlinkat",
    268: "fchmodat",
    316: "renameat2",
}

#: Context fields farm asks for on every point: ids, start times (which make a pid
#: unique despite reuse), the container and the process name. ``credentials`` is left
#: out because uids are fixed by policy. docs/observer.md has the measured cost.
CHEAP_CONTEXT = (
    "time",
    "thread_id",
    "task_start_time",
    "group_id",
    "thread_group_start_time",
    "container_id",
    "process_name",
)
#: Points that can become a BlockedAction also carry the cwd (a path walk per event),
#: which every action reports and which resolves relative paths.
ACTION_CONTEXT = (*CHEAP_CONTEXT, "cwd")


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One entry of the trace session's ``points`` list."""

    name: str
    context_fields: tuple[str, ...] = ACTION_CONTEXT
    optional_fields: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "context_fields": list(self.context_fields),
            "optional_fields": list(self.optional_fields),
        }


def _exits(*names: str, optional: tuple[str, ...] = ()) -> tuple[PointSpec, ...]:
    # Exit points carry the arguments *and* the result, so one event per syscall
    # tells both what was tried and whether gVisor refused it.
    return tuple(PointSpec(f"syscall/{n}/exit", optional_fields=optional) for n in names)


def _raw(*sysnos: int) -> tuple[PointSpec, ...]:
    # gVisor fills a raw exit event's context from the *enter* point's field set
    # (kernel/task_syscall.go), so without the enter point the exit is anonymous.
    # Both are enabled: enter says who tried, exit says whether it worked.
    return tuple(
        PointSpec(f"syscall/sysno/{n}/{phase}") for n in sysnos for phase in ("enter", "exit")
    )


#: Process lifecycle, needed to attribute every other event to a build step. Cheap:
#: a handful per process.
LIFECYCLE_POINTS: tuple[PointSpec, ...] = tuple(
    PointSpec(name, context_fields=CHEAP_CONTEXT)
    for name in ("container/start", "sentry/clone", "sentry/execve", "sentry/task_exit")
)

#: Rare syscalls whose mere attempt is suspicious in a build: network and privilege.
GUARD_POINTS: tuple[PointSpec, ...] = (
    *_exits("socket", "setuid", "setgid", "setresuid", "setresgid", "chroot"),
    *_exits("connect", "bind", optional=("fd_path",)),
    *_raw(*sorted(RAW_SYSCALLS)),
    *_raw(*sorted(RAW_FS_SYSCALLS)),
)

#: File opens, for ``sensitive_read`` and ``fs_write_denied``. The only high-volume
#: points: a build opens thousands of files (see docs/observer.md for the cost).
OPEN_POINTS: tuple[PointSpec, ...] = (
    *_exits("open", "creat"),
    *_exits("openat", optional=("fd_path",)),
)

DEFAULT_POINTS: tuple[PointSpec, ...] = LIFECYCLE_POINTS + GUARD_POINTS + OPEN_POINTS


@dataclass(frozen=True, slots=True)
class SockAddr:
    """A decoded ``struct sockaddr``: family name plus host and port, or a unix path."""

    family: str
    host: str = ""
    port: int = 0
    path: str = ""


def parse_sockaddr(raw: bytes) -> SockAddr | None:
    """Decode the ``address`` bytes of a connect or bind event; None if unreadable.

    The bytes are the sandboxed process's own argument, so they may be short or junk.
    """
    if len(raw) < 2:
        return None
    family = int.from_bytes(raw[:2], "little")
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack_from(">H", raw, 2)[0]
        return SockAddr("inet", str(ipaddress.IPv4Address(raw[4:8])), port)
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = struct.unpack_from(">H", raw, 2)[0]
        return SockAddr("inet6", str(ipaddress.IPv6Address(raw[8:24])), port)
    if family == socket.AF_UNIX:
        return SockAddr("unix", path=_unix_path(raw[2:]))
    return SockAddr(f"af{family}")


def _unix_path(path: bytes) -> str:
    # A leading NUL marks an abstract name (shown as "@name", as ss(8) does); a
    # filesystem path ends at its first NUL.
    if path[:1] == b"\0":
        return "@" + path[1:].rstrip(b"\0").decode(errors="backslashreplace")
    return path.split(b"\0", 1)[0].decode(errors="backslashreplace")

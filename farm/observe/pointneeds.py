"""Why each trace point of ``DEFAULT_POINTS`` is enabled: the one table (issue 14).

Callers: ``tests/unit/test_point_needs.py``, which replays the attack corpus recorded in
farm's real sandbox (tests/data/points-*.jsonl.gz, by bench/points.py) with each point
left out, and requires that this table list exactly the enabled points, each with the
attacks whose result changes without it or, when none does, the reason it stays.
docs/observer.md, "Trace points against the attack corpus", has the table with the
events each point costs.

``attacks`` are the corpus's attacking packages (``tests/fixtures/attacks``) whose
recorded actions change without the point (lost, changed, or blamed on nobody).
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.observe.points import RAW_FS_SYSCALLS, RAW_SYSCALLS


@dataclass(frozen=True)
class Need:
    """Why one point is enabled."""

    #: What the point lets farm see (the threat of design-brief.md it serves).
    guards: str
    #: The attacks of the corpus whose result changes without the point.
    attacks: tuple[str, ...] = ()
    #: Only for a point no attack needs: why it is kept anyway.
    kept: str = ""


_RAW_FS = "tamper: the call's failure on a read-only path is fs_write_denied"
_RAW_GUARDS = {
    "sendto": "exfiltrate: a send with its own address",
    "sendmsg": "exfiltrate: a send whose address is inside the message",
    "sendmmsg": "exfiltrate: a batch of sends whose addresses are inside the messages",
    **{
        name: f"escalate: {name} is a privilege action whatever its result"
        for name in RAW_SYSCALLS.values()
        if not name.startswith("send")
    },
    **dict.fromkeys(RAW_FS_SYSCALLS.values(), _RAW_FS),
}
_ENTER = "who made the call: gVisor fills the exit event's context from the enter point"


def _raw(sysno: int, *attacks: str) -> dict[str, Need]:
    """The enter and exit points of a raw syscall: the enter names the caller, the exit
    carries the result; an attack that needs one needs both."""
    name = RAW_SYSCALLS.get(sysno) or RAW_FS_SYSCALLS[sysno]
    return {
        f"syscall/sysno/{sysno}/enter": Need(f"{_ENTER} ({name})", attacks),
        f"syscall/sysno/{sysno}/exit": Need(_RAW_GUARDS[name], attacks),
    }


_ALL = (
    "alias-attack",
    "dns-attack",
    "forge-macro",
    "forge-script",
    "fs-attack",
    "kill-cargo",
    "macro-attack",
    "net-attack",
    "persist-attack",
    "priv-attack",
    "secrets-attack",
    "syscall-attack",
)
_PROCESS = "attribution: the process tree, each process's binary, argv and cargo's env"

NEEDS: dict[str, Need] = {
    "container/start": Need(
        "the container's init task: its argv, and when its record starts",
        kept=(
            "the spool ends a container's record once its init (known only from this "
            "event) and every task of it have exited (farm/observe/lifecycle.py); without "
            "it a Kubernetes pod's build record would end only when the whole pod sandbox "
            "is gone. One event per container; the replay covers classification only."
        ),
    ),
    "sentry/clone": Need(_PROCESS, _ALL),
    "sentry/execve": Need(_PROCESS, _ALL),
    "sentry/task_exit": Need(
        "persist: which processes outlived the build command", ("kill-cargo", "persist-attack")
    ),
    "syscall/socket/exit": Need(
        "escalate and exfiltrate: raw and packet sockets; each socket's protocol",
        ("dns-attack", "macro-attack", "net-attack", "priv-attack", "syscall-attack"),
    ),
    "syscall/setuid/exit": Need("escalate: setuid(0)", ("priv-attack",)),
    "syscall/setgid/exit": Need("escalate: setgid(0)", ("syscall-attack",)),
    "syscall/setresuid/exit": Need("escalate: setresuid to 0", ("syscall-attack",)),
    "syscall/setresgid/exit": Need("escalate: setresgid to 0", ("syscall-attack",)),
    "syscall/chroot/exit": Need("escalate: chroot", ("priv-attack",)),
    "syscall/connect/exit": Need(
        "exfiltrate: TCP, UDP and unix connects, and the names asked of the sinkhole",
        ("dns-attack", "macro-attack", "net-attack"),
    ),
    "syscall/bind/exit": Need(
        "exfiltrate: a bind beyond the sandbox's loopback; the ports the sandbox serves",
        ("syscall-attack",),
    ),
    **_raw(44, "net-attack"),
    **_raw(46, "syscall-attack"),
    **_raw(101, "priv-attack"),
    **_raw(155, "syscall-attack"),
    **_raw(165, "priv-attack"),
    **_raw(166, "syscall-attack"),
    **_raw(175, "syscall-attack"),
    **_raw(176, "syscall-attack"),
    **_raw(250, "priv-attack"),
    **_raw(272, "priv-attack"),
    **_raw(307, "syscall-attack"),
    **_raw(308, "syscall-attack"),
    **_raw(313, "syscall-attack"),
    **_raw(321, "priv-attack"),
    **_raw(76, "syscall-attack"),
    **_raw(82, "fs-attack"),
    **_raw(83, "syscall-attack"),
    **_raw(84, "syscall-attack"),
    **_raw(86, "syscall-attack"),
    **_raw(87, "fs-attack"),
    **_raw(88, "syscall-attack"),
    **_raw(90, "fs-attack"),
    **_raw(92, "syscall-attack"),
    **_raw(258, "syscall-attack"),
    **_raw(263, "syscall-attack"),
    **_raw(264, "syscall-attack"),
    **_raw(265, "fs-attack"),
    **_raw(266, "syscall-attack"),
    **_raw(268, "syscall-attack"),
    **_raw(316, "syscall-attack"),
    "syscall/open/exit": Need(
        "steal secrets and tamper through open(2): sensitive_read, fs_write_denied",
        ("syscall-attack",),
    ),
    "syscall/creat/exit": Need("tamper through creat(2): fs_write_denied", ("syscall-attack",)),
    "syscall/openat/exit": Need(
        "steal secrets and tamper: sensitive_read, fs_write_denied, devices; proc-macro "
        "loads (attribution) and the fd table that resolves /proc/<pid>/fd aliases",
        (
            "alias-attack",
            "dns-attack",
            "forge-macro",
            "forge-script",
            "fs-attack",
            "macro-attack",
            "priv-attack",
            "secrets-attack",
        ),
    ),
}

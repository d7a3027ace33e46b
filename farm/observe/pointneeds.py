"""Why each trace point of ``DEFAULT_POINTS`` is enabled: the one table (issue 14).

Callers: ``tests/unit/test_point_needs.py``, which replays the attack corpus recorded in
farm's real sandbox (tests/data/points-*.jsonl.gz, by bench/points.py) with each point
left out, and requires that this table list exactly the enabled points, each with the
attacks whose result changes without it or, when none does, the reason it stays.
docs/observer.md, "Trace points against the attack corpus", has the table with the
events each point costs.

``attacks`` are the corpus's attacking packages (``tests/fixtures/attacks``), or
``<recording>: no package`` when the change is an action blamed on nobody.
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


NEEDS: dict[str, Need] = {}

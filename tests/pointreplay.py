"""Replay a recorded build's gVisor events through farm's own classification and verdict,
with one trace point left out, and say which attacks' results change (issue 14).

Callers: ``bench/points.py`` (records the attack corpus in farm's real sandbox, prints
the table of docs/observer.md "Trace points against the attack corpus") and
``tests/unit/test_point_needs.py`` (the same replay over the recordings committed in
tests/data/points-*.jsonl.gz).

A :class:`Recording` holds what the runner's observation step reads (farm.runner's
``_observe``): the container's events, the lockfile's versions, the sinkhole resolver's
log, the build's honeytokens and its observe policy, plus the actions the real build
recorded, so a replay of the whole record can be checked against the runner's own
result. :func:`replay` runs the same stages: ``classify.iter_actions``,
``sinkhole.merge``, ``honeytokens.Marker`` and ``verdict.tally``.

File format: gzip, one JSON document per line; the first is the recording without its
events, then one ``TraceEvent.model_dump()`` per line, bytes as ``{"$hex": …}``.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

from farm import sinkhole
from farm.honeytokens import Finder, Honeytokens, Marker
from farm.observe.classify import BlockedAction, iter_actions
from farm.observe.events import TraceEvent
from farm.observe.pointuse import point_of, without
from farm.observe.verdict import Tally, apply_allow
from farm.spec import ObservePolicy

#: The fields of an action that make an attack's result: what was tried, how it ended,
#: who is blamed, whether policy allowed it and what the honeytokens say. Times, pids,
#: argv and cwd are evidence that differs between runs.
RESULT_FIELDS = (
    "package",
    "version",
    "role",
    "compiling",
    "kind",
    "operation",
    "target",
    "spelled",
    "errno",
    "protocol",
    "port",
    "allowed",
    "honeytoken",
    "exfiltrated",
)


class Recording(BaseModel):
    """One observed build, as its observation step read it."""

    name: str
    #: The packages whose code attacks (empty for a benign build).
    attacks: list[str] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    #: The verdict is replayed in this policy (the corpus's, in enforce mode).
    policy: ObservePolicy = Field(default_factory=ObservePolicy)
    #: farm.sinkhole's log (pid, n -> name), None when the resolver did not run.
    resolver_pid: int | None = None
    resolved: dict[int, str] | None = None
    #: The build's honeytokens (Honeytokens' fields), None if it had none.
    tokens: dict[str, str] | None = None
    #: The actions the real build recorded (BuildRecord.blocked_actions).
    recorded: list[dict[str, Any]] = Field(default_factory=list)
    events: list[TraceEvent] = Field(default_factory=list)
    _results: dict[str, Counter] | None = PrivateAttr(default=None)

    def results(self) -> dict[str, Counter]:
        """:func:`results` of the whole record (computed once)."""
        if self._results is None:
            self._results = results(self, actions(self))
        return self._results


def actions(recording: Recording, events: Iterable[TraceEvent] | None = None) -> Tally:
    """The runner's observation stages over ``events`` (default: all of the recording)."""
    dns_port = sinkhole.PORT if recording.resolved is not None else None
    stream: Iterator[BlockedAction] = iter_actions(
        recording.events if events is None else events, recording.versions, dns_port=dns_port
    )
    if recording.resolved is not None:
        resolved = sinkhole.Resolved(pid=recording.resolver_pid, names=recording.resolved)
        stream = sinkhole.merge(stream, resolved)
    if recording.tokens:
        stream = Marker(Finder(Honeytokens(**recording.tokens))).mark(stream)
    # Every action listed (the record's cap of 256 is not what is measured here).
    return Tally(max_actions=1 << 20, max_bytes=1 << 40).add_all(
        apply_allow(stream, recording.policy)
    )


def result_key(action: BlockedAction | dict[str, Any]) -> tuple:
    doc = action.model_dump() if isinstance(action, BlockedAction) else action
    return tuple(doc.get(name) for name in RESULT_FIELDS)


def results(recording: Recording, counted: Tally) -> dict[str, Counter]:
    """Each attack's actions (by :data:`RESULT_FIELDS`); every other action under
    ``<recording>: <package>`` (a false positive) or ``<recording>: no package``."""
    by: dict[str, Counter] = {name: Counter() for name in recording.attacks}
    for action in counted.listed():
        who = action.package or "no package"
        who = who if who in recording.attacks else f"{recording.name}: {who}"
        by.setdefault(who, Counter())[result_key(action)] += 1
    return by


def quarantined(counted: Tally, policy: ObservePolicy) -> bool:
    return policy.mode == "enforce" and counted.refused > 0


class Change(BaseModel):
    """How one attack's result differs without a point."""

    who: str
    lost: int
    gained: int
    #: Every refused action of the attack is gone: built alone, it would pass enforce.
    escaped: bool


def changes(recording: Recording, point: str) -> list[Change]:
    """What changes in ``recording`` when ``point`` is disabled ([] if nothing)."""
    if not any(point_of(e) == point or _feeds(point, e) for e in recording.events):
        return []  # the point sent nothing here: the replay would be the same
    before = recording.results()
    after = results(recording, actions(recording, without(recording.events, point)))
    found = []
    for who in sorted(set(before) | set(after)):
        old, new = before.get(who, Counter()), after.get(who, Counter())
        if old == new:
            continue
        refused = sum(n for key, n in new.items() if not key[RESULT_FIELDS.index("allowed")])
        escaped = who in recording.attacks and refused == 0
        lost, gained = sum((old - new).values()), sum((new - old).values())
        found.append(Change(who=who, lost=lost, gained=gained, escaped=escaped))
    return found


def _feeds(point: str, event: TraceEvent) -> bool:
    """A raw enter point changes its exit events too (farm.observe.pointuse.without)."""
    return point.endswith("/enter") and point_of(event) == point[: -len("enter")] + "exit"


def counts(recording: Recording) -> Counter:
    """Events per point."""
    return Counter(point_of(e) for e in recording.events)


# -- files ------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$hex": value.hex()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$hex"}:
            return bytes.fromhex(value["$hex"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def dumps(recording: Recording) -> list[str]:
    """The recording as lines of JSON (see the module docstring)."""
    head = recording.model_dump(mode="json", exclude={"events"})
    lines = [json.dumps(head, sort_keys=True)]
    lines += [json.dumps(_encode(e.model_dump()), sort_keys=True) for e in recording.events]
    return lines


def loads(lines: Iterable[str]) -> Recording:
    docs = iter(lines)
    head = json.loads(next(docs))
    events = [TraceEvent.model_validate(_decode(json.loads(line))) for line in docs]
    return Recording.model_validate({**head, "events": events})


def save(recording: Recording, path: Path) -> None:
    with gzip.open(path, "wt") as f:
        f.writelines(line + "\n" for line in dumps(recording))


def load(path: Path) -> Recording:
    with gzip.open(path, "rt") as f:
        return loads(f)

"""Observation memory: a spool as large as the daemon keeps for one sandbox is judged as
a stream, so the runner's peak memory stays bounded, and a record of more actions than
it lists is still judged on all of them and says how many it leaves out.

The measurement runs in a fresh interpreter (``VmHWM`` is the process's peak RSS), over
the runner's real observation step on a spool written in the daemon's own format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from farm.observe.points import MessageType
from farm.observe.spool import _LEN, MAX_SPOOL_BYTES
from farm.observe.verdict import MAX_LISTED_ACTIONS, MAX_LISTED_BYTES
from farm.observe.wire import encode_field, encode_header

from . import test_provenance

attested = test_provenance.attested  # the fixture of an attested hello-serde build

#: Peak RSS the runner may add while it judges a full spool. Generous: the old code,
#: which decoded the spool whole, needs gigabytes for the same file.
BOUND = 200 << 20
#: Each event reads a secret path padded to 1 KiB, so a full spool is ~470k actions.
PAD = 1024

MEASURE = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path

from farm.observe.daemon import HostObserver, ObserverPaths
from farm.policy import BuildDirs
from farm.records import BuildRecord, Status
from farm.runner import Runner
from farm.spec import BuildSpec, ObservePolicy
from farm.store import Store


def hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


spool, source = Path(sys.argv[1]), Path(sys.argv[2])
observer = HostObserver(ObserverPaths(socket=spool / "none.sock", spool=spool))
spec = BuildSpec(source=source, argv=["true"], observe=ObservePolicy(mode="enforce"))
record = BuildRecord(
    id="b1", status=Status.SUCCEEDED, tenant="default", image="img",
    runtime="runsc-observed", spec={}, created_at=datetime.now(UTC), container_id="box",
)
before = hwm()
# The runner's own observation step (no sandbox: the record is already in the spool).
runner = Runner.__new__(Runner)
runner.store = Store(source.parent / "home")  # where the behaviour profiles go
Runner._observe(runner, record, spec, BuildDirs(source.parent), observer, 5.0)
after = hwm()
print(json.dumps({"before": before, "after": after, "record": record.model_dump(mode="json")}))
"""


def secret_read(n: int) -> bytes:
    """An ``open`` datagram of a secret path, as runsc sends it (tgid 7, cwd /src)."""
    ctx = encode_field(1, n + 1) + encode_field(4, 7) + encode_field(6, "box")
    ctx += encode_field(8, "/src")
    path = "/root/.ssh/" + "k" * PAD
    body = encode_field(1, ctx) + encode_field(6, path) + encode_field(4, -100)
    return encode_header(MessageType.SYSCALL_OPEN) + body


def write_full_spool(spool: Path) -> int:
    """A finished record of MAX_SPOOL_BYTES, as the daemon writes it; returns its events."""
    spool.mkdir()
    records, size = [], 0
    while size < 1 << 20:  # a 1 MiB block, written until the spool is full
        datagram = secret_read(len(records))
        records.append(_LEN.pack(len(datagram)) + datagram)
        size += len(records[-1])
    block = b"".join(records)
    count = MAX_SPOOL_BYTES // len(block)
    with (spool / "box.1.trace").open("wb") as f:
        for _ in range(count):
            f.write(block)
    (spool / "box.1.meta").write_text(json.dumps({"datagrams": count * len(records)}))
    return count * len(records)


def test_a_full_spool_is_judged_in_bounded_memory_and_quarantined() -> None:
    with tempfile.TemporaryDirectory(prefix="farm-mem-") as d:
        spool, source = Path(d) / "spool", Path(d) / "src"
        source.mkdir()
        events = write_full_spool(spool)
        assert (spool / "box.1.trace").stat().st_size > MAX_SPOOL_BYTES - (1 << 20)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(spool), str(source)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert list(spool.iterdir()) == []  # the record was consumed
    out = json.loads(done.stdout)
    grew = out["after"] - out["before"]
    print(f"peak RSS grew by {grew >> 20} MiB judging {events} events")
    assert grew < BOUND, f"peak RSS grew by {grew >> 20} MiB judging a full spool"

    record = out["record"]
    obs = record["observation"]
    assert record["status"] == "quarantined" and record["artifacts"] == []
    assert (obs["events"], obs["actions"]) == (events, events)  # every action judged
    listed = len(record["blocked_actions"])
    assert 0 < listed <= MAX_LISTED_ACTIONS  # and within the byte cap
    assert len(json.dumps(record["blocked_actions"], separators=(",", ":"))) <= MAX_LISTED_BYTES
    assert obs["unlisted"] == events - listed
    [reason] = obs["quarantine_reasons"]
    assert reason.startswith(f"{events} blocked actions not allowed by policy")
    assert f"{events - listed} actions are not listed" in reason
    # argv and cwd of a listed action are capped as well
    assert all(len(a["argv"]) <= 32 for a in record["blocked_actions"])


def test_the_report_says_how_many_actions_it_does_not_list() -> None:
    from datetime import UTC, datetime

    from farm.observe.classify import BlockedAction
    from farm.observe.verdict import judge
    from farm.records import BuildRecord, Status, TraceCompleteness
    from farm.report import build_report, render
    from farm.spec import ObservePolicy

    def read(n: int) -> BlockedAction:
        return BlockedAction(
            kind="sensitive_read", operation="open", target="/etc/shadow", errno="EACCES",
            time_ns=n, pid=9, process_name="cat", executable="/usr/bin/cat",
            argv=["cat", "x" * 1000, *["y"] * 100], cwd="/src",
        )  # fmt: skip

    record = BuildRecord(
        id="b1", status=Status.SUCCEEDED, tenant="default", image="img",
        runtime="runsc-observed", spec={}, created_at=datetime.now(UTC),
    )  # fmt: skip
    judge(record, TraceCompleteness(), 1000, (read(n) for n in range(1000)), ObservePolicy())
    assert record.status is Status.QUARANTINED
    assert len(record.blocked_actions) == MAX_LISTED_ACTIONS
    assert {(len(a["argv"]), len(a["argv"][1])) for a in record.blocked_actions} == {(32, 256)}
    assert record.observation is not None and record.observation.unlisted == 744
    text = render(build_report(record))
    assert "744 of 1000 actions are not listed below (over the record's cap)" in text
    assert "1000 blocked actions not allowed by policy (by /usr/bin/cat)" in text


def test_a_flood_of_allowed_actions_cannot_push_a_refused_one_out_of_the_listing() -> None:
    from farm.observe.classify import BlockedAction
    from farm.observe.verdict import tally
    from farm.spec import AllowRule, ObservePolicy

    def read(n: int, target: str) -> BlockedAction:
        return BlockedAction(
            kind="sensitive_read", operation="open", target=target, errno="EACCES",
            time_ns=n, pid=9, process_name="cat", executable="/usr/bin/cat", argv=["cat"],
        )  # fmt: skip

    flood = [read(n, "/tmp/home/.netrc") for n in range(5000)]
    policy = ObservePolicy(allow=[AllowRule(target="/tmp/home/*")])
    counted = tally([*flood, read(9999, "/etc/shadow")], policy)
    listed = counted.listed()
    assert (counted.total, counted.refused, len(listed)) == (5001, 1, MAX_LISTED_ACTIONS)
    assert listed[-1].target == "/etc/shadow" and not listed[-1].allowed
    assert [a.time_ns for a in listed] == sorted(a.time_ns for a in listed)


def test_no_network_sees_a_network_attempt_the_record_does_not_list(
    tmp_path: Path, attested
) -> None:
    """An audit-mode build hides one connect behind 300 other actions: its signed
    provenance still counts it, so `farm verify --require no-network` refuses."""
    from farm.errors import VerificationError
    from farm.observe.classify import BlockedAction
    from farm.observe.verdict import judge
    from farm.provenance import attest
    from farm.records import TraceCompleteness
    from farm.signing import load_public_key, public_key_path
    from farm.spec import ObservePolicy, build_spec
    from farm.store import Store
    from farm.verify import verify

    from .test_provenance import HELLO, payload

    def act(n: int, kind: str) -> BlockedAction:
        return BlockedAction(
            kind=kind, operation="open for write", target="/usr/bin/x", errno="EACCES",
            time_ns=n, pid=9, process_name="sh", executable="/bin/sh", argv=["sh"],
        )  # fmt: skip

    home, artifact, _, envelope = attested
    store = Store(home)
    record = store.get(payload(envelope)["predicate"]["runDetails"]["metadata"]["invocationId"])
    actions = [act(n, "fs_write_denied") for n in range(300)] + [act(300, "network")]
    judge(record, TraceCompleteness(), 301, iter(actions), ObservePolicy(mode="audit"))
    assert record.observation is not None and record.observation.unlisted > 0
    assert "network" not in {a["kind"] for a in record.blocked_actions}  # not listed...
    spec = build_spec({"source": str(HELLO), "source_date_epoch": 1_700_000_000})
    signed = tmp_path / "flood.json"
    signed.write_bytes(store.blob_path(attest(record, spec, store, home)).read_bytes())
    with pytest.raises(VerificationError, match="1 network attempts"):  # ...but counted
        verify(artifact, signed, load_public_key(public_key_path(home)), ["no-network"])

"""Trace points against the attack corpus (issue 14): record each attack build once in
farm's real sandbox, then replay its events offline with each point left out.

    python bench/points.py record [--out DIR] [NAME ...]    # sandbox builds, once each
    python bench/points.py table  [--out DIR] [--json FILE] # offline: the table
    python bench/points.py fixtures [--out DIR]             # tests/data/points-*.jsonl.gz

``record`` builds each of :data:`BUILDS` the normal way (``farm build``, observed by the
host's observer daemon, in-process so the observation step can be teed) and keeps what
that step read (tests/pointreplay.py's ``Recording``): every decoded event, the
lockfile's versions, the sinkhole resolver's log, the honeytokens and the actions the
build recorded. Each build runs in a child process of its own, with a fresh FARM_HOME.

``table`` replays farm's own classification and verdict for every point and prints,
per point: events on examples/hello-serde (the cost), events in the corpus, and the
attacks whose result changes without it ("escaped": none of its refused actions left).
A replay of the whole record must give the build's own actions, or the tool stops.

``fixtures`` writes the committed recordings for tests/unit/test_point_needs.py: opens
that cannot matter are trimmed, exec environments cut to cargo's CARGO_PKG_* variables,
and the honeytokens (fake, but shaped like real credentials) replaced by placeholders;
the table of the trimmed recordings must equal the full one's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from farm import ecosystems, sinkhole  # noqa: E402
from farm.honeytokens import Finder, Honeytokens  # noqa: E402
from farm.observe.classify import O_ACCMODE, O_APPEND, O_CREAT, O_TRUNC  # noqa: E402
from farm.observe.daemon import HostObserver  # noqa: E402
from farm.observe.events import TraceEvent, in_time_order  # noqa: E402
from farm.observe.points import DEFAULT_POINTS  # noqa: E402
from farm.observe.processes import ProcessTable  # noqa: E402
from farm.spec import AllowRule, ObservePolicy  # noqa: E402
from tests.pointreplay import (  # noqa: E402
    Recording,
    actions,
    changes,
    counts,
    dumps,
    load,
    loads,
    result_key,
    save,
)

ATTACKS = ROOT / "tests" / "fixtures" / "attacks"
FIXTURES = Path(os.environ.get("FARM_POINTS_FIXTURES", ROOT / "tests" / "data"))
DEFAULT_OUT = Path("/tmp/farm-points")


@dataclass(frozen=True)
class Build:
    source: Path
    args: tuple[str, ...]
    #: The packages that attack ([] for a benign build).
    attacks: tuple[str, ...]
    policy: ObservePolicy = field(default_factory=ObservePolicy)


BUILDS = {
    # tests/e2e/test_attacks.py's corpus (audit there; the verdict is replayed enforced)
    "attacks": Build(
        ATTACKS,
        ("--mode", "audit", "--env", "FARM_ATTACK_PORT=47002"),
        (
            "net-attack",
            "fs-attack",
            "priv-attack",
            "secrets-attack",
            "persist-attack",
            "macro-attack",
            "dns-attack",
        ),
    ),
    # tests/e2e/test_attack_evasion.py, with its allow rule
    "evasion": Build(
        ATTACKS / "evasion",
        (),
        ("alias-attack", "forge-macro", "forge-script"),
        ObservePolicy(allow=[AllowRule(package="serde*derive")]),
    ),
    "kill-cargo": Build(ATTACKS / "kill-cargo", (), ("kill-cargo",)),
    "syscall-attack": Build(ATTACKS / "syscall-attack", (), ("syscall-attack",)),
    # the cost side, and a benign build no replay may flag
    "hello-serde": Build(ROOT / "examples" / "hello-serde", (), ()),
}


# -- record (one sandbox build per child process) -----------------------------------


class _Tee:
    """A spooled record whose events are kept as the runner reads them."""

    def __init__(self, record, kept: list[TraceEvent]) -> None:  # type: ignore[no-untyped-def]
        self.record, self.kept = record, kept
        self.container_id = record.container_id

    def stream(self):  # type: ignore[no-untyped-def]
        for event in self.record.stream():
            self.kept.append(event)
            yield event

    def seen(self):  # type: ignore[no-untyped-def]
        return self.record.seen()


def record_one(name: str, out: Path) -> None:
    """``farm build`` of one of :data:`BUILDS`, in this process, with its observation
    step's inputs teed into ``out/NAME.jsonl.gz``."""
    from farm import cli

    build, got = BUILDS[name], {"events": []}
    collect, read_log, generate = HostObserver.collect, sinkhole.read_log, Honeytokens.generate

    def tee_collect(self, container_id, timeout=None):  # type: ignore[no-untyped-def]
        return _Tee(collect(self, container_id, timeout), got["events"])

    def tee_read_log(log_dir):  # type: ignore[no-untyped-def]
        got["resolved"] = read_log(log_dir)
        return got["resolved"]

    def tee_generate():  # type: ignore[no-untyped-def]
        got["tokens"] = generate()
        return got["tokens"]

    HostObserver.collect = tee_collect  # type: ignore[method-assign]
    sinkhole.read_log = tee_read_log
    Honeytokens.generate = staticmethod(tee_generate)  # type: ignore[method-assign]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["build", str(build.source), "--json", *build.args])
    done = json.loads(stdout.getvalue())
    print(f"{name}: farm build exit {code}, {len(got['events'])} events", file=sys.stderr)
    resolved = got.get("resolved")
    tokens = got.get("tokens")
    recording = Recording(
        name=name,
        attacks=list(build.attacks),
        versions=ecosystems.lock_versions(build.source),
        policy=build.policy,
        resolver_pid=resolved.pid if resolved else None,
        resolved=dict(resolved.names) if resolved else None,
        tokens=dataclasses.asdict(tokens) if tokens else None,
        recorded=done.get("blocked_actions", []),
        events=got["events"],
    )
    save(recording, out / f"{name}.jsonl.gz")


def record(names: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        home = Path(tempfile.mkdtemp(prefix=f"points-{name}-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env |= {"FARM_HOME": str(home), "PYTHONPATH": str(ROOT)}
        try:
            argv = [sys.executable, __file__, "record-one", name, "--out", str(out)]
            subprocess.run(argv, env=env, check=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)


# -- the table ------------------------------------------------------------------------


def check_replay(recording: Recording) -> None:
    """The replay of the whole record gives exactly the build's own actions."""
    replayed = sorted(map(result_key, actions(recording).listed()), key=repr)
    recorded = sorted(map(result_key, recording.recorded), key=repr)
    if replayed != recorded:
        raise SystemExit(f"{recording.name}: the replay differs from the build's record")


def table(recordings: dict[str, Recording]) -> list[dict]:
    """One row per point (every enabled one, and any other that sent events)."""
    names = [p.name for p in DEFAULT_POINTS]
    seen = {p for r in recordings.values() for p in counts(r)}
    rows = []
    benign = recordings.get("hello-serde")
    for point in names + sorted(seen - set(names)):
        found = [c for r in recordings.values() for c in changes(r, point)]
        rows.append(
            {
                "point": point,
                "enabled": point in names,
                "hello_serde_events": counts(benign)[point] if benign else None,
                "corpus_events": sum(
                    counts(r)[point] for r in recordings.values() if r.name != "hello-serde"
                ),
                "changes": [c.model_dump() for c in found],
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| point | events, hello-serde | events, corpus | attacks whose result changes "
        "without it |",
        "|---|---:|---:|---|",
    ]
    for row in rows:
        said = ", ".join(
            f"{c['who']}{' (escapes)' if c['escaped'] else ''} -{c['lost']}/+{c['gained']}"
            for c in row["changes"]
        )
        lines.append(
            f"| `{row['point']}` | {row['hello_serde_events']} | {row['corpus_events']} "
            f"| {said or '**none**'} |"
        )
    return "\n".join(lines)


def load_all(out: Path) -> dict[str, Recording]:
    return {p.name.split(".")[0]: load(p) for p in sorted(out.glob("*.jsonl.gz"))}


# -- committed fixtures ---------------------------------------------------------------

KEPT_ENV = ("CARGO_PKG_NAME=", "CARGO_PKG_VERSION=", "CARGO_CRATE_NAME=")
#: Stand-ins for the build's honeytokens: never shaped like a real credential.
PLACEHOLDERS = Honeytokens(
    aws_key_id="FARMFAKEAWSKEYID0001",
    aws_secret="farmfakeawssecretvalue0002",
    cargo_token="farmfakecargotokenvalue0003",
    git_token="farmfakegittokenvalue0004",
    ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----\nfarmfakesshkeymaterial00000005\n"
    "-----END OPENSSH PRIVATE KEY-----\n",
)


def _matters(event: TraceEvent, table: ProcessTable, acted: set[tuple[int, int]]) -> bool:
    """False for an open no rule or attribution can turn on: a failed open that made no
    action (only successful opens feed the fd table and attribution), or a successful
    read-only open of a non-library by a process no package's own code runs in."""
    if event.kind != "open":
        return True
    if event.errno:
        return (event.context.time_ns, event.context.thread_group_id) in acted
    flags = int(event.fields.get("flags", 0))
    path = str(event.fields.get("pathname", ""))
    if flags & O_ACCMODE or flags & (O_CREAT | O_TRUNC | O_APPEND) or ".so" in path:
        return True
    who = table.attribute(event.context.thread_group_id, event.context.time_ns)
    return who.role in ("build script", "proc macro") or not path.startswith("/")


def _trimmed_event(event: TraceEvent) -> TraceEvent:
    if event.kind != "exec":
        return event
    env = [v for v in event.fields.get("env", []) if v.startswith(KEPT_ENV)]
    return event.model_copy(update={"fields": {**event.fields, "env": env}})


def trim(recording: Recording) -> Recording:
    table = ProcessTable(recording.versions)
    acted = {(a.time_ns, a.pid) for a in actions(recording).listed()}
    kept = []
    for event in in_time_order(recording.events, window=len(recording.events) + 1):
        table.track(event)
        if _matters(event, table, acted):
            kept.append(_trimmed_event(event))
    return recording.model_copy(update={"events": kept})


def redact(recording: Recording) -> Recording:
    """The recording with each honeytoken value (any case) replaced by its placeholder."""
    if not recording.tokens:
        return recording
    real = Honeytokens(**recording.tokens)
    stand_in = dict(PLACEHOLDERS.needles())
    swap = {value.lower(): stand_in.get(kind, "") for kind, value in real.needles()}
    swap[real.aws_key_id.lower()] = PLACEHOLDERS.aws_key_id
    swap[real.aws_secret.lower()] = PLACEHOLDERS.aws_secret
    swap[real.ssh_key.strip().lower()] = PLACEHOLDERS.ssh_key.strip()
    pattern = re.compile("|".join(re.escape(v) for v in sorted(swap, key=len, reverse=True)), re.I)
    text = "\n".join(dumps(recording))
    text = pattern.sub(lambda m: swap[m.group().lower()], text)
    if Finder(real).kinds(text):
        raise SystemExit(f"{recording.name}: a honeytoken survived the redaction")
    done = loads(text.splitlines())
    return done.model_copy(update={"tokens": dataclasses.asdict(PLACEHOLDERS)})


def fixtures(out: Path) -> None:
    for name, full in load_all(out).items():
        if name == "hello-serde":
            continue  # the cost side: counted by `table`, not needed by the test
        small = redact(trim(full))
        check_replay(small)
        want = {p.name: changes(full, p.name) for p in DEFAULT_POINTS}
        got = {p.name: changes(small, p.name) for p in DEFAULT_POINTS}
        if got != want:
            raise SystemExit(f"{name}: trimming changed the replay: {want} != {got}")
        path = FIXTURES / f"points-{name}.jsonl.gz"
        save(small, path)
        print(f"{path}: {len(small.events)} of {len(full.events)} events", file=sys.stderr)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["record", "record-one", "table", "fixtures"])
    parser.add_argument("names", nargs="*", default=list(BUILDS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.names, args.out)
    elif args.command == "record-one":
        record_one(args.names[0], args.out)
    elif args.command == "fixtures":
        fixtures(args.out)
    else:
        recordings = load_all(args.out)
        for recording in recordings.values():
            check_replay(recording)
        rows = table(recordings)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

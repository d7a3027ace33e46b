"""Capture a real build's trace events, trimmed, as a profile test fixture.

Run on a host with dockerd and runsc (never part of the test suite):

    PYTHONPATH=$PWD python tests/data/capture_profile_events.py SOURCE OUT.jsonl.gz

It runs ``farm build SOURCE`` in-process with the profile builder's event stream teed,
then keeps only the events the profile needs: process events (container_start, clone,
exec, task_exit), and the opens and network events of processes whose actions a
profile charges to a package, plus every open of a shared library (a proc-macro load).
Exec environments are cut to cargo's CARGO_PKG_* variables.
"""

from __future__ import annotations

import gzip
import json
import sys
from typing import Any

from farm import cli
from farm.observe.events import TraceEvent
from farm.profiles import derive
from farm.profiles.derive import PROFILED_ROLES

PROCESS_KINDS = {"container_start", "clone", "exec", "task_exit"}
KEPT_ENV = ("CARGO_PKG_NAME=", "CARGO_PKG_VERSION=", "CARGO_CRATE_NAME=")


def encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$hex": value.hex()}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value


def main(source: str, out: str) -> int:
    kept: list[dict] = []
    watch = derive.ProfileBuilder.watch

    def tee(self, events):  # type: ignore[no-untyped-def]
        for event in watch(self, events):
            if _keep(self, event):
                kept.append(_trim(event))
            yield event

    derive.ProfileBuilder.watch = tee  # type: ignore[method-assign]
    code = cli.main(["build", source, "--mode", "audit", "--json"])
    with gzip.open(out, "wt") as f:
        for event in kept:
            f.write(json.dumps(event, sort_keys=True) + "\n")
    print(f"build exit {code}; kept {len(kept)} events in {out}", file=sys.stderr)
    return code


def _keep(builder: derive.ProfileBuilder, event: TraceEvent) -> bool:
    if event.kind in PROCESS_KINDS:
        return True
    if event.kind == "open" and ".so" in str(event.fields.get("pathname", "")):
        return True
    who = builder.table.attribute(event.context.thread_group_id, event.context.time_ns)
    return bool(who.package) and who.role in PROFILED_ROLES


def _trim(event: TraceEvent) -> dict:
    doc = event.model_dump()
    if event.kind == "exec":
        env = doc["fields"].get("env", [])
        doc["fields"]["env"] = [v for v in env if v.startswith(KEPT_ENV)]
    return encode(doc)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

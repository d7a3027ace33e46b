"""farm.cargovet: which packages one build's record can give safe-to-run evidence for,
the exact note, and every reason it gives none."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime

import pytest

from farm.cargovet import evidence, render
from farm.records import BuildRecord, ObservationSummary, Status

LOCK = """
version = 3

[[package]]
name = "app"
version = "0.1.0"

[[package]]
name = "serde"
version = "1.0.152"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "bb7d1f0d3021d347a83e556fc4683dea2ea09d87bccdf88ff5c12545d89d5efb"

[[package]]
name = "serde_derive"
version = "1.0.152"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "evil"
version = "0.3.1"
source = "registry+https://github.com/rust-lang/crates.io-index"
"""


def act(package: str | None, **extra: object) -> dict:
    base = {"kind": "network", "operation": "connect", "target": "127.0.0.1:9", "errno": ""}
    base |= {"time_ns": 1, "pid": 5, "process_name": "b", "executable": "/b", "argv": ["b"]}
    return {**base, "package": package, "version": "0.3.1", "role": "build script", **extra}


def record(**changes: object) -> BuildRecord:
    base = BuildRecord(
        id="20261205-120000-abcdef",
        status=Status.SUCCEEDED,
        tenant="default",
        image="farm/rust:bookworm",
        image_id="sha256:1234",
        runtime="runsc-observed",
        spec={"argv": ["cargo", "build", "--release", "--locked", "--offline"]},
        created_at=datetime(2026, 12, 5, tzinfo=UTC),
        exit_code=0,
        lockfile_sha256="ab" * 32,
        observation=ObservationSummary(mode="audit", events=100),
        blocked_actions=[act("evil")],
    )
    return base.model_copy(update=changes)


def test_clean_registry_packages_get_a_note_and_the_one_that_acted_none() -> None:
    ev = evidence(record(), LOCK)
    assert ev.refused == [] and ev.not_clean == ["evil 0.3.1"]
    assert [(p.name, p.version) for p in ev.packages] == [
        ("serde", "1.0.152"),
        ("serde_derive", "1.0.152"),
    ]
    note = ev.packages[0].note
    assert note.startswith(
        "Evidence for safe-to-run (not an audit): farm build 20261205-120000-abcdef ran "
        "`cargo build --release --locked --offline` in gVisor with no network, image "
        "farm/rust:bookworm (sha256:1234), Cargo.lock sha256:" + "ab" * 32 + ", on 2026-12-05."
    )
    assert "no blocked or suspicious action by serde 1.0.152" in note
    assert "this build's features, target, profile and toolchain only" in note
    assert "not the crate's behaviour at run time" in note


def test_the_human_form_pastes_into_audits_toml_as_a_notes_string() -> None:
    text = render(evidence(record(), LOCK))
    assert "[[audits" not in text and "who" not in text  # never an audit entry
    line = next(ln for ln in text.splitlines() if ln.startswith("  notes = "))
    assert tomllib.loads(line.strip())["notes"] == evidence(record(), LOCK).packages[0].note
    assert "# no evidence (actions recorded): evil 0.3.1" in text


def test_a_proc_macro_suspect_gets_no_evidence() -> None:
    macro = act("serde_derive", role="proc macro", suspects=["serde_derive", "evil"])
    ev = evidence(record(blocked_actions=[macro]), LOCK)
    assert [p.name for p in ev.packages] == ["serde"]
    assert sorted(ev.not_clean) == ["evil 0.3.1", "serde_derive 1.0.152"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"observation": None}, "the build was not observed (--no-observe)"),
        (
            {"observation": ObservationSummary(mode="audit", dropped=3)},
            "gVisor's record is incomplete (3 events lost)",
        ),
        (
            {"observation": ObservationSummary(mode="audit", unlisted=9)},
            "9 actions are not listed in the record (over its cap)",
        ),
        ({"status": Status.FAILED, "exit_code": 101}, "the build command did not finish (failed)"),
        ({"insecure_runtime": True}, "the build ran without gVisor (--insecure-runtime)"),
        ({"blocked_actions": [act(None)]}, "1 actions are attributed to no package"),
    ],
)
def test_a_record_that_cannot_vouch_gives_no_evidence(changes: dict, reason: str) -> None:
    ev = evidence(record(**changes), LOCK)
    assert (ev.refused, ev.packages) == ([reason], [])
    assert f"# no evidence: {reason}" in render(ev)


def test_no_lockfile_no_evidence() -> None:
    assert evidence(record(), None).refused == ["the build has no Cargo.lock in the store"]

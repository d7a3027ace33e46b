"""Allow rules, the enforce verdict and the per-package report, on typed records."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.errors import SpecError
from farm.observe.classify import BlockedAction
from farm.observe.spool import Observation
from farm.observe.verdict import apply_allow, judge, matches, quarantine_reasons
from farm.records import Artifact, BuildRecord, ObservationSummary, Status, TraceCompleteness
from farm.report import build_report, render
from farm.spec import AllowRule, ObservePolicy, build_spec


def action(**kw: object) -> BlockedAction:
    base = {
        "kind": "fs_write_denied",
        "operation": "open for write",
        "target": "/usr/bin/x",
        "errno": "EACCES",
        "time_ns": 1,
        "pid": 9,
        "process_name": "cc",
        "executable": "/usr/bin/cc",
        "argv": ["cc"],
        "package": "openssl-sys",
        "version": "0.9.1",
        "role": "build script",
    }
    return BlockedAction.model_validate({**base, **kw})


def test_every_field_a_rule_sets_must_match() -> None:
    rule = AllowRule(package="*-sys", role="build script", executable="*/cc")
    assert matches(rule, action())
    assert not matches(rule, action(package="evil"))
    assert not matches(rule, action(executable="/usr/bin/curl"))
    assert not matches(AllowRule(kind="network"), action())
    assert matches(AllowRule(target="/usr/bin/*"), action())


def test_each_rule_field_matches_the_action_field_of_that_name() -> None:
    """matches() reads the action's field named like the rule's, so every rule field
    must exist on BlockedAction; an action's missing package matches only "" or "*"."""
    assert set(AllowRule.model_fields) <= set(BlockedAction.model_fields)
    for name in AllowRule.model_fields:
        value = "network" if name == "kind" else "build script" if name == "role" else "x"
        assert matches(AllowRule.model_validate({name: value}), action(**{name: value}))
    assert matches(AllowRule(package="*"), action(package=None))
    assert not matches(AllowRule(package="?*"), action(package=None))


def test_enforce_quarantines_what_no_rule_allows() -> None:
    policy = ObservePolicy(allow=[AllowRule(package="*-sys")])
    actions = apply_allow([action(), action(package="evil")], policy)
    assert [a.allowed for a in actions] == [True, False]
    seen = Observation(container_id="c")
    assert quarantine_reasons(actions, seen, policy) == [
        "1 blocked actions not allowed by policy (by evil)"
    ]
    assert quarantine_reasons(actions[:1], seen, policy) == []
    assert quarantine_reasons(actions, seen, ObservePolicy(mode="audit")) == []


def test_an_incomplete_or_lossy_record_quarantines_in_enforce_mode() -> None:
    policy = ObservePolicy()
    gone = Observation(container_id="c", complete=False, problem="no trace connection")
    assert quarantine_reasons([], gone, policy) == [
        "gVisor's record is incomplete: no trace connection"
    ]
    lossy = Observation(container_id="c", dropped=2, unparseable=1)
    assert quarantine_reasons([], lossy, policy) == [
        "3 of gVisor's events were lost (dropped or undecodable)"
    ]


def test_a_rule_that_matches_everything_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"observe\.allow\[0\]: an allow rule needs"):
        build_spec({"source": str(tmp_path), "observe": {"allow": [{}]}})
    with pytest.raises(SpecError, match=r"observe\.mode"):
        build_spec({"source": str(tmp_path), "observe": {"mode": "warn"}})
    assert build_spec({"source": str(tmp_path)}).observe.mode == "enforce"


def record(
    actions: list[BlockedAction],
    summary: ObservationSummary | None,
    status: Status = Status.QUARANTINED,
) -> BuildRecord:
    return BuildRecord(
        id="b1",
        status=status,
        tenant="default",
        image="img",
        runtime="runsc-observed",
        spec={},
        created_at=datetime.now(UTC),
        exit_code=0,
        blocked_actions=[a.model_dump() for a in actions],
        observation=summary,
    )


def test_report_aggregates_per_package() -> None:
    net = action(
        kind="network",
        operation="connect",
        target="127.0.0.1:443",
        errno="ECONNREFUSED",
        package="evil",
        version="0.3.1",
        protocol="tcp",
        port=443,
        address="127.0.0.1",
        family="inet",
    )
    summary = ObservationSummary(
        mode="enforce", events=10, actions=3, quarantine_reasons=["3 blocked actions"]
    )
    report = build_report(record([net, net, action(allowed=True)], summary))
    assert [(p.who, p.kinds) for p in report.packages] == [
        ("evil 0.3.1 (build script)", ["network"]),
        ("openssl-sys 0.9.1 (build script)", ["fs_write_denied"]),
    ]
    assert report.packages[0].actions[0].count == 2
    text = render(report)
    assert "evil 0.3.1 (build script): 2 actions" in text
    assert "network         connect 127.0.0.1:443/tcp blocked (ECONNREFUSED) (x2)" in text
    assert "[allowed by policy]" in text
    assert "QUARANTINED: 3 blocked actions; artifacts withheld" in text
    assert (
        net.line() == "evil 0.3.1 (build script): connect 127.0.0.1:443/tcp blocked (ECONNREFUSED)"
    )


def test_report_of_an_unobserved_build_says_so() -> None:
    text = render(build_report(record([], None)))
    assert "not observed" in text


def test_judge_withholds_a_succeeded_build_and_blames_a_failed_one_only_for_attempts() -> None:
    """The one quarantine decision the runner and the Kubernetes controller share."""
    enforce, clean = ObservePolicy(), TraceCompleteness()
    ok = record([], None, Status.SUCCEEDED)
    ok.artifacts = [Artifact(path="out/app", sha256="0" * 64, size=1)]
    judge(ok, clean, 5, [action()], enforce)
    assert (ok.status, ok.artifacts, ok.observation.events) == (Status.QUARANTINED, [], 5)
    assert ok.blocked_actions[0]["package"] == "openssl-sys"

    lossy = TraceCompleteness(complete=False, problem="the node monitor never reported")
    failed = record([], None, Status.FAILED)
    judge(failed, lossy, 0, [], enforce)  # nothing tried: its own failure stands
    assert failed.status is Status.FAILED
    assert "observation incomplete: the node monitor never reported" in failed.notes
    judge(failed, clean, 1, [action()], enforce)
    assert failed.status is Status.QUARANTINED

    audited = record([], None, Status.SUCCEEDED)
    judge(audited, lossy, 1, [action()], ObservePolicy(mode="audit"))
    assert audited.status is Status.SUCCEEDED and len(audited.blocked_actions) == 1

"""Behaviour profiles: normalisation, categories, diff severity, store and the verdict
on a build record (farm.profiles). The events of real builds are in
tests/unit/test_profiles_recorded.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from farm.profiles.diff import changes, render
from farm.profiles.judge import apply
from farm.profiles.model import Profile
from farm.profiles.normalise import category, entry_category, normalise
from farm.profiles.store import ProfileStore
from farm.records import BuildRecord, Status
from farm.spec import ObservePolicy

T0 = datetime(2026, 12, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (
            "/build/target/release/build/serde-1a2b3c4d5e6f7a8b/build-script-build",
            "<target>/release/build/serde-*/build-script-build",
        ),
        (
            "/build/target/release/deps/libserde-0123456789abcdef.rlib",
            "<target>/release/deps/libserde-*.rlib",
        ),
        ("/tmp/rustcAb12Cd/symbols.o", "/tmp/rustc*/symbols.o"),
        ("/tmp/rustcXyZqWe/lib.rmeta", "/tmp/rustc*/lib.rmeta"),
        ("/tmp/home/.ssh/id_rsa", "/tmp/home/.ssh/id_rsa"),
        ("/tmp/payload", "/tmp/payload"),
        ("/proc/4711/environ", "/proc/<pid>/environ"),
        (
            "/usr/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-0a1b2c3d4e5f6a7b.so",
            "/usr/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-*.so",
        ),
        ("/etc/passwd", "/etc/passwd"),
    ],
)
def test_normalise_strips_what_differs_between_builds(raw: str, normal: str) -> None:
    assert normalise(raw) == normal


@pytest.mark.parametrize(
    ("path", "cat"),
    [
        ("/tmp/home/.ssh/id_rsa", "sensitive"),
        ("/etc/shadow", "sensitive"),
        ("/proc/1/environ", "sensitive"),
        ("/tmp/x/payload", "scratch"),
        ("/build/target/release/evil", "scratch"),
        ("/usr/bin/cc", "toolchain"),
        ("/etc/ld.so.cache", "toolchain"),
        ("/home/alice/notes", "other"),
        ("/etc/hostname", "other"),
    ],
)
def test_categories(path: str, cat: str) -> None:
    assert category(path) == cat


@pytest.mark.parametrize(
    ("entry", "cat"),
    [
        ("/proc/<pid>/environ", "sensitive"),
        ("/proc/<pid>/status", "toolchain"),
        ("<target>/release/build/x-*/payload", "scratch"),
        ("/tmp/rustc*/lib.rmeta", "scratch"),
    ],
)
def test_the_category_of_a_normalised_entry(entry: str, cat: str) -> None:
    assert entry_category(entry) == cat


def profile(version: str, **aspects: list[str]) -> Profile:
    return Profile(package="tattle", version=version, roles=["build script"], **aspects)


def test_changes_rank_the_new_entries_by_the_severity_table() -> None:
    base = profile("0.1.0", reads=["/usr/lib/libc.so.6"], executables=["/usr/bin/cc"])
    new = profile(
        "0.2.0",
        reads=["/tmp/home/.ssh/id_rsa", "/usr/share/zoneinfo/UTC", "/home/x"],
        executables=["/tmp/dropper"],
        network=["connect exfil.example.net:443/tcp"],
    )
    found = [(c.change, c.aspect, c.entry, c.severity) for c in changes(base, new)]
    assert found == [
        ("added", "network", "connect exfil.example.net:443/tcp", "high"),
        ("added", "reads", "/tmp/home/.ssh/id_rsa", "high"),
        ("added", "executables", "/tmp/dropper", "medium"),
        ("added", "reads", "/home/x", "medium"),
        ("added", "reads", "/usr/share/zoneinfo/UTC", "info"),
        ("removed", "executables", "/usr/bin/cc", "low"),
        ("removed", "reads", "/usr/lib/libc.so.6", "info"),
    ]
    assert changes(new, new) == []
    assert "+ network     connect exfil.example.net:443/tcp  [high]" in render(
        __import__("farm.profiles.diff", fromlist=["diff"]).diff(base, new)
    )


def record(build_id: str, when: datetime, tenant: str = "t") -> BuildRecord:
    return BuildRecord(
        id=build_id,
        status=Status.SUCCEEDED,
        tenant=tenant,
        image="i",
        runtime="runsc",
        spec={},
        created_at=when,
    )


def test_a_new_secret_read_is_noted_and_quarantines_when_asked(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    policy = ObservePolicy(quarantine_on_behaviour_change="high")
    first = record("b1", T0)
    apply(first, [profile("0.1.0", reads=["/usr/lib/x"])], store, policy)
    assert (first.status, first.behaviour_changes) == (Status.SUCCEEDED, [])  # first sight

    second = record("b2", T0 + timedelta(minutes=1))
    apply(second, [profile("0.2.0", reads=["/usr/lib/x", "/etc/shadow"])], store, policy)
    [change] = second.behaviour_changes
    assert (change.severity, change.base_version, change.base_build) == ("high", "0.1.0", "b1")
    assert second.status is Status.QUARANTINED and second.artifacts == []
    assert any(
        n.startswith("behaviour_changed (high): tattle 0.2.0 vs 0.1.0") for n in second.notes
    )
    assert [b for b, _ in store.history("t", "tattle")] == ["b2", "b1"]
    assert [p.version for p in store.of_build("b2")] == ["0.2.0"]

    # Retried, the same quarantined behaviour is compared with the last clean build,
    # not with its own quarantined first try.
    retry = record("b3", T0 + timedelta(minutes=2))
    apply(retry, [profile("0.2.0", reads=["/usr/lib/x", "/etc/shadow"])], store, policy)
    assert retry.status is Status.QUARANTINED
    assert [c.base_build for c in retry.behaviour_changes] == ["b1"]


def test_info_changes_are_noted_without_quarantine_and_audit_never_quarantines(
    tmp_path: Path,
) -> None:
    store = ProfileStore(tmp_path)
    apply(record("b1", T0), [profile("0.1.0")], store, ObservePolicy())
    info = record("b2", T0 + timedelta(minutes=1))
    policy = ObservePolicy(quarantine_on_behaviour_change="high")
    apply(info, [profile("0.2.0", reads=["/usr/share/x"])], store, policy)
    assert info.status is Status.SUCCEEDED and info.behaviour_changes[0].severity == "info"
    audit = record("b3", T0 + timedelta(minutes=2))
    policy = ObservePolicy(mode="audit", quarantine_on_behaviour_change="info")
    apply(audit, [profile("0.3.0", reads=["/etc/shadow"])], store, policy)
    assert audit.status is Status.SUCCEEDED and audit.behaviour_changes[0].severity == "high"


def test_profiles_are_per_tenant(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    apply(record("b1", T0, "a"), [profile("0.1.0")], store, ObservePolicy())
    other = record("b2", T0 + timedelta(minutes=1), "b")
    apply(other, [profile("0.2.0", reads=["/etc/shadow"])], store, ObservePolicy())
    assert other.behaviour_changes == []  # tenant b never saw tattle before


def test_the_policy_option_is_checked() -> None:
    with pytest.raises(ValueError, match="quarantine_on_behaviour_change"):
        ObservePolicy(quarantine_on_behaviour_change="severe")  # type: ignore[arg-type]


def test_farm_diff_forms_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from farm import cli

    store = ProfileStore(tmp_path)
    store.save("default", "b1", T0, [profile("0.1.0", reads=["/usr/lib/x"])])
    store.save(
        "default", "b2", T0 + timedelta(minutes=1), [profile("0.2.0", reads=["/etc/shadow"])]
    )
    monkeypatch.setenv("FARM_HOME", str(tmp_path))
    for args in (
        ["tattle@0.1.0", "@0.2.0"],
        ["tattle@0.2.0"],
        ["tattle"],
        ["tattle", "--build", "b2"],
    ):
        assert cli.main(["diff", *args, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["base_version"], out["new_version"]) == ("0.1.0", "0.2.0"), args
        assert [(c["change"], c["entry"]) for c in out["changes"]] == [
            ("added", "/etc/shadow"),
            ("removed", "/usr/lib/x"),
        ]
    assert cli.main(["diff", "tattle@0.1.0"]) == 0
    assert "(no earlier profile) -> tattle 0.1.0" in capsys.readouterr().out
    for args, message in (
        (["nothing"], "no behaviour profile of 'nothing'"),
        (["tattle@9.9.9"], "no profile of tattle 9.9.9; known versions: 0.1.0, 0.2.0"),
        (["tattle@0.1.0", "0.2.0"], "the second version is written @VERSION"),
        (["tattle", "@0.2.0"], "name the first version too"),
    ):
        assert cli.main(["diff", *args]) == 2
        assert message in capsys.readouterr().err


def test_a_build_inventing_paths_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.observe.classify import BlockedAction
    from farm.profiles import derive

    monkeypatch.setattr(derive, "MAX_BUILD_ENTRIES", 10)
    builder = derive.ProfileBuilder({})
    for n in range(600):
        builder.note_action(
            BlockedAction(
                kind="sensitive_read" if n < 300 else "privilege",
                operation="open",
                target=f"/root/.ssh/key{n}" + "x" * 600,
                errno="",
                time_ns=n,
                pid=2,
                process_name="b",
                executable="/b",
                argv=[],
                package=f"pkg{n % 2}",
                version="1.0.0",
                role="build script",
            )
        )
    found = builder.profiles()
    assert sum(len(p.reads) + len(p.privilege) for p in found) == 10
    assert all(p.truncated for p in found)
    assert all(len(e) <= 512 for p in found for e in p.reads)

"""The snapshot copies what lies beneath the source, even while its owner changes it
(issue 11, item 3), and farm serve's confinement gives no oracle (item 13).

Races are made deterministic through snapshot's ``hook`` seam: the test swaps a
directory for a symlink exactly between two steps of the walk, then checks from the
outside that nothing outside the tree changed and nothing from outside was copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.confine import SourcePolicy
from farm.errors import InputError
from farm.provenance import lockfile
from farm.records import Status
from farm.runner import Runner
from farm.sandbox import SandboxResult
from farm.settings import Settings
from farm.snapshot import digest, snapshot
from farm.spec import build_spec
from farm.store import Store


def _tree(root: Path) -> Path:
    src = root / "src"
    (src / "sub" / "inner").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("attacker bytes\n")
    (src / "sub" / "inner" / "b.txt").write_text("more attacker bytes\n")
    (src / "top.txt").write_text("top\n")
    return src


def _outside(root: Path) -> tuple[Path, dict[str, tuple[float, bytes]]]:
    """A directory outside the tree, shaped like `sub`, holding a 'secret'."""
    decoy = root / "decoy"
    (decoy / "inner").mkdir(parents=True)
    (decoy / "a.txt").write_text("root-only secret\n")
    (decoy / "a.txt").chmod(0o600)
    (decoy / "inner" / "b.txt").write_text("another secret\n")
    return decoy, _state(decoy)


def _state(path: Path) -> dict[str, tuple[float, bytes]]:
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(path))] = (st.st_mtime_ns, p.read_bytes() if p.is_file() else b"")
    st = path.lstat()
    out["."] = (st.st_mtime_ns, b"")
    return out


def _swap(
    src: Path, name: str, target: Path, moment: tuple[str, str]
) -> Callable[[str, str], None]:
    """At ``moment`` (the hook's ``(event, rel)``): move directory ``name`` away and put
    a symlink to ``target`` in its place, once."""
    done: list[bool] = []

    def hook(event: str, rel: str) -> None:
        if (event, rel) == moment and not done:
            done.append(True)
            (src / name).rename(src.parent / f"moved-{name.replace('/', '-')}")
            (src / name).symlink_to(target)

    return hook


@pytest.mark.parametrize(
    "moment",
    [("listed", "."), ("created", "sub"), ("listed", "sub"), ("created", "sub/inner")],
    ids=["after-walk", "after-copy-created", "after-subdir-listed", "after-deeper-copy"],
)
@pytest.mark.parametrize("goal", ["read-secret", "write-outside"])
def test_a_directory_swapped_for_a_symlink_mid_copy(
    tmp_path: Path, moment: tuple[str, str], goal: str
) -> None:
    src = _tree(tmp_path)
    decoy, before = _outside(tmp_path)
    swapped = "sub" if moment[1] in (".", "sub") else "sub/inner"
    target = decoy if swapped == "sub" else decoy / "inner"
    if goal == "write-outside":
        # The swapped name points at where the copy is being written: a walker that
        # followed it would write the tree's bytes into a directory outside.
        target = tmp_path / "watched"
        target.mkdir()
    hook = _swap(src, swapped, target, moment)
    watched_before = _state(target)
    with pytest.raises(InputError, match=r"source: sub.* changed while being copied; try again"):
        snapshot(src, tmp_path / "copy", 1_700_000_000, hook=hook)
    assert _state(decoy) == before
    assert _state(target) == watched_before
    copied = b"".join(p.read_bytes() for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert b"secret" not in copied
    assert not any(p.is_symlink() for p in (tmp_path / "copy").rglob("*"))


def test_a_directory_swapped_after_it_was_opened_is_noticed(tmp_path: Path) -> None:
    """Moved away while its listing is being copied: the fd still reads the original
    (the tenant's own bytes), and the check when leaving it fails the snapshot."""
    src = _tree(tmp_path)
    decoy, before = _outside(tmp_path)
    hook = _swap(src, "sub", decoy, ("listed", "sub/inner"))
    with pytest.raises(InputError, match="changed while being copied"):
        snapshot(src, tmp_path / "copy", 0, hook=hook)
    assert _state(decoy) == before


def test_a_file_swapped_for_a_symlink_or_another_file(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("root-only secret\n")

    def to_link(event: str, rel: str) -> None:
        if (event, rel) == ("listed", "."):
            (src / "top.txt").unlink()
            (src / "top.txt").symlink_to(secret)

    with pytest.raises(InputError, match=r"top\.txt changed"):
        snapshot(src, tmp_path / "c1", 0, hook=to_link)
    src2 = _tree(tmp_path / "two")

    def to_hardlink(event: str, rel: str) -> None:  # same name, another inode
        if (event, rel) == ("listed", "."):
            (src2 / "top.txt").unlink()
            os.link(secret, src2 / "top.txt")

    with pytest.raises(InputError, match=r"top\.txt changed"):
        snapshot(src2, tmp_path / "c2", 0, hook=to_hardlink)
    assert not any(b"secret" in p.read_bytes() for p in tmp_path.glob("c?/**/*") if p.is_file())


def test_symlinks_are_copied_last_and_never_written_through(tmp_path: Path) -> None:
    """A tree whose symlink `a` sorts before `a/…` would-be entries and points outside:
    the copy holds the link as a link, and nothing is written where it points."""
    src = tmp_path / "src"
    src.mkdir()
    watched = tmp_path / "watched"
    watched.mkdir()
    (src / "0link").symlink_to(watched)
    (src / "1dir").mkdir()
    (src / "1dir" / "x").write_text("x")
    (src / "1dir" / "up").symlink_to("../0link")
    sha = snapshot(src, tmp_path / "copy", 5)
    assert sha == digest(src)
    assert os.readlink(tmp_path / "copy" / "0link") == str(watched)
    assert list(watched.iterdir()) == []
    assert (tmp_path / "copy" / "1dir").stat().st_mtime == 5
    assert os.lstat(tmp_path / "copy" / "0link").st_mtime == 5


def test_deep_trees_are_copied_iteratively(tmp_path: Path) -> None:
    src = tmp_path / "src"
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("src", dir_fd=fd)
    current = os.open("src", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    for _ in range(300):  # deeper than Python's default recursion would like
        os.mkdir("d", dir_fd=current)
        nxt = os.open("d", os.O_RDONLY, dir_fd=current)
        os.close(current)
        current = nxt
    os.close(current)
    assert snapshot(src, tmp_path / "copy", 0) == digest(src)


def test_the_manifest_format_is_unchanged(tmp_path: Path) -> None:
    """The digest of a fixed tree, as the path-based snapshot of before computed it:
    cache keys and provenance made before the descriptor walk still match."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a-b").mkdir()
    (src / "target").mkdir()
    (src / "target" / "junk").write_text("left out")
    (src / "x" / "target").mkdir(parents=True)
    (src / "x" / "target" / "kept").write_text("kept: only the top target is left out")
    (src / "a" / "b" / "run.sh").write_text("#!/bin/sh\n")
    (src / "a" / "b" / "run.sh").chmod(0o750)
    (src / "a-b" / "g").write_text("g\n")
    (src / "a-b" / "l").symlink_to("../a")
    (src / "new\nline").write_text("n\n")
    (src / "\u00e9t\u00e9").write_text("unicode\n")
    pinned = "sha256:e7d02f8d4689670b3e52c8a4d8041f3f1e12ce634c6a4ac68838872274aabc43"
    assert digest(src) == pinned == snapshot(src, tmp_path / "copy", 0)


# farm serve's confinement


def _policy(tmp_path: Path, per_tenant: bool = True) -> tuple[SourcePolicy, Path]:
    root = tmp_path / "sources"
    (root / "alice" / "proj" / "src").mkdir(parents=True)
    (root / "alice" / "proj" / "src" / "main.rs").write_text("fn main() {}\n")
    (root / "bob" / "proj").mkdir(parents=True)
    (root / "bob" / "proj" / "secret.txt").write_text("bob's secret\n")
    return SourcePolicy(root, per_tenant=per_tenant), root


def _spec(source: Path | str, tenant: str = "alice"):
    return build_spec({"source": str(source), "tenant": tenant, "argv": ["true"]}, service=True)


def test_a_component_swapped_after_the_check_is_refused(tmp_path: Path) -> None:
    policy, root = _policy(tmp_path)
    spec = _spec(root / "alice" / "proj")
    policy.check(spec)
    # Between the check and the snapshot: alice's project becomes a link to bob's.
    (root / "alice" / "proj").rename(root / "alice" / "old")
    (root / "alice" / "proj").symlink_to(root / "bob" / "proj")
    with pytest.raises(InputError, match="without following a symlink"):
        snapshot(spec.source, tmp_path / "copy", 0, within=policy.allowed("alice"))
    with pytest.raises(InputError, match="without following a symlink"):
        digest(spec.source, within=policy.allowed("alice"))
    assert not (tmp_path / "copy" / "secret.txt").exists()
    # A parent component swapped works no better.
    (root / "alice" / "proj").unlink()
    (root / "alice" / "old").rename(root / "alice" / "real")
    (root / "alice" / "deep").symlink_to(root / "bob")
    with pytest.raises(InputError):
        snapshot(root / "alice" / "deep" / "proj", tmp_path / "c2", 0, within=root / "alice")


def test_outside_gets_one_answer_whether_or_not_it_exists(tmp_path: Path) -> None:
    policy, root = _policy(tmp_path)
    (root / "alice" / "to-bob").symlink_to(root / "bob" / "proj")
    (root / "alice" / "to-nowhere").symlink_to(root / "bob" / "nothing")
    (root / "alice" / "to-root").symlink_to("/root")
    (root / "alice" / "to-missing").symlink_to("/root/no-such-dir")
    answers = {}
    for name, source in {
        "bob-exists": root / "bob" / "proj",
        "bob-missing": root / "bob" / "nothing",
        "host-exists": Path("/etc"),
        "host-missing": Path("/etc/no-such-dir"),
        "dotdot-exists": root / "alice" / ".." / "bob" / "proj",
        "dotdot-missing": root / "alice" / ".." / "bob" / "nothing",
    }.items():
        with pytest.raises(InputError) as err:
            policy.check(_spec(source))
        answers[name] = str(err.value).replace(str(source), "SOURCE")
    assert len(set(answers.values())) == 1, answers
    assert "outside this service's source directory" in answers["bob-exists"]
    links = {}
    for name in ("to-bob", "to-nowhere", "to-root", "to-missing"):
        source = root / "alice" / name
        for below in ("", "x"):
            with pytest.raises(InputError) as err:
                policy.check(_spec(source / below if below else source))
            links[name + below] = str(err.value).replace(str(source), "SOURCE")
    assert links["to-bob"] == links["to-nowhere"] == links["to-root"] == links["to-missing"]
    assert links["to-bobx"] == links["to-nowherex"] == links["to-rootx"] == links["to-missingx"]
    policy.check(_spec(root / "alice" / "proj"))  # the real path is fine
    with pytest.raises(InputError, match="does not exist"):
        policy.check(_spec(root / "alice" / "nothing"))  # inside: the tenant's own business


class _SwappingBackend:
    """A backend whose preflight (after farm serve's check and resolve, before the
    snapshot) turns alice's project into a link to bob's; run() must never be reached."""

    name = "fake"

    def __init__(self, swap: Callable[[], None]) -> None:
        self.swap, self.ran = swap, False

    def preflight(self, spec: object) -> str:
        self.swap()
        return "sha256:image"

    def image_id(self, image: str) -> str:
        return "sha256:image"

    def run(self, spec: object, **_: object) -> object:
        self.ran = True
        raise AssertionError("the sandbox must not start")

    def list_sandboxes(self) -> dict[str, str]:
        return {}

    def teardown(self, sandbox_id: str) -> list[str]:
        return []


def test_the_runner_snapshots_beneath_the_service_root(tmp_path: Path) -> None:
    policy, root = _policy(tmp_path)
    spec = _spec(root / "alice" / "proj")
    policy.check(spec)

    def swap() -> None:
        (root / "alice" / "proj").rename(root / "alice" / "old")
        (root / "alice" / "proj").symlink_to(root / "bob" / "proj")

    backend = _SwappingBackend(swap)
    settings = Settings(home=tmp_path / "home", observe=False)
    runner = Runner(settings, backend, Store(settings.home), sources=policy)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="without following a symlink"):
        runner.build(spec, "b1")
    record = Store(settings.home).get("b1")
    assert record.status is Status.FAILED and not backend.ran
    assert any("without following a symlink" in note for note in record.notes)


class _RunningBackend(_SwappingBackend):
    """Runs nothing, succeeds, and lets the test change the source while 'building'."""

    def run(self, spec: object, **_: object) -> SandboxResult:
        self.swap()
        now = datetime.now(UTC)
        return SandboxResult(
            container_id="c1", runtime="fake", exit_code=0, started_at=now, finished_at=now
        )

    def preflight(self, spec: object) -> str:
        return "sha256:image"


def test_provenance_gets_the_snapshots_cargo_lock_not_the_tree_of_later(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Cargo.lock").write_text('[[package]]\nname = "built"\nversion = "1.0.0"\n')
    secret = tmp_path / "secret.toml"
    secret.write_text('[[package]]\nname = "root-only"\nversion = "6.6.6"\n')

    def change() -> None:  # during the build: the tree's Cargo.lock now points at a secret
        (src / "Cargo.lock").unlink()
        (src / "Cargo.lock").symlink_to(secret)

    settings = Settings(home=tmp_path / "home", observe=False)
    store = Store(settings.home)
    runner = Runner(settings, _RunningBackend(change), store)  # type: ignore[arg-type]
    spec = build_spec({"source": str(src), "argv": ["true"], "outputs": ["out/**"]})
    record = runner.build(spec, "b1")
    assert record.status is Status.SUCCEEDED and record.lockfile_sha256
    assert lockfile(record, spec, store) == '[[package]]\nname = "built"\nversion = "1.0.0"\n'

    # A Cargo.lock that is a link when snapshotted is copied as a link and not kept.
    runner = Runner(settings, _RunningBackend(lambda: None), store)  # type: ignore[arg-type]
    record = runner.build(spec, "b2")
    assert record.lockfile_sha256 is None
    assert "root-only" not in (lockfile(record, spec, store) or "")

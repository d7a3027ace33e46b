"""SOURCE_DATE_EPOCH is read from an untrusted repository without running anything it
configures, and agrees with git's own answer (issue 11, item 2)."""

from __future__ import annotations

import os
import random
import resource
import struct
import zlib
from pathlib import Path

import pytest

from farm.epoch import commit_epoch, read_epoch
from farm.errors import SpecError
from farm.gitread import MAX_OBJECT, Repo
from farm.runner import resolve
from farm.spec import build_spec
from tests.hostilegit import (
    clean_git,
    commit_all,
    git_log_epoch,
    gitdir_file_tree,
    hostile_repo,
    script,
)


@pytest.mark.parametrize("packed", [False, True], ids=["loose", "packed"])
def test_hostile_config_runs_nothing_and_the_epoch_is_right(tmp_path: Path, packed: bool) -> None:
    hostile = hostile_repo(tmp_path / "repo", tmp_path / "markers", packed=packed)
    assert commit_epoch(hostile.repo) == hostile.epoch  # the signed commit's own time
    assert commit_epoch(hostile.repo / "crate") == hostile.sub_epoch
    spec = resolve(build_spec({"source": str(hostile.repo / "crate"), "argv": ["true"]}))
    assert spec.source_date_epoch == hostile.sub_epoch
    assert hostile.fired() == []


def _history(repo: Path) -> dict[str, int]:
    """A history with merges, several directories, a deleted one and an empty commit;
    returns the directories to ask about."""
    clean_git(repo, "init", "-q", "-b", "main")
    rng = random.Random(7)
    when = 1_600_000_000
    dirs = ["a", "b", "a/deep", "c"]
    for i in range(30):
        when += 1000
        for d in rng.sample(dirs, 2):
            (repo / d).mkdir(parents=True, exist_ok=True)
            # Long, slightly changed files: `git gc` stores most versions as deltas.
            lines = [f"line {n} {'x' * 40}\n" for n in range(400)]
            lines[rng.randrange(400)] = f"changed {i}\n"
            (repo / d / "f.txt").write_text("".join(lines))
        commit_all(repo, f"c{i}", when)
        if i == 10:
            clean_git(repo, "checkout", "-q", "-b", "side")
        if i == 15:
            clean_git(repo, "checkout", "-q", "main")
        if i == 20:
            when += 1000
            clean_git(repo, "merge", "-q", "--no-ff", "-m", "merge", "side", date=when)
    when += 1000
    (repo / "c" / "f.txt").unlink()
    commit_all(repo, "remove c", when)
    commit_all(repo, "empty", when + 1000)
    return {d: git_log_epoch(repo / d) or 0 for d in ["", "a", "b", "a/deep"]}


@pytest.mark.parametrize("packed", [False, True], ids=["loose", "packed"])
def test_agrees_with_git_on_a_history_with_merges(tmp_path: Path, packed: bool) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    expected = _history(repo)
    if packed:
        clean_git(repo, "gc", "-q", "--aggressive", "--prune=now")
        assert not list((repo / ".git" / "objects").glob("??/*")), "still loose objects"
        verify = clean_git(
            repo, "verify-pack", "-v", *map(str, repo.glob(".git/objects/pack/*.idx"))
        )
        assert "chain length" in verify, "the pack holds no deltas: the test proves nothing"
    for d, value in expected.items():
        assert commit_epoch(repo / d) == value, d
    assert len(set(expected.values())) > 1


def test_ofs_and_ref_deltas(tmp_path: Path) -> None:
    """A pack written without OFS deltas (REF deltas only) reads the same."""
    repo = tmp_path / "repo"
    repo.mkdir()
    expected = _history(repo)
    clean_git(repo, "repack", "-a", "-d", "-f", "--depth=50", "--window=50")
    packs = list(repo.glob(".git/objects/pack/*.pack"))
    # Rewrite with REF deltas: pack-objects without --delta-base-offset.
    ids = clean_git(repo, "rev-list", "--objects", "--all").encode()
    stem = clean_git(repo, "pack-objects", "-q", "--window=50", str(repo / "refpack"), stdin=ids)
    for old in packs:
        old.unlink()
        old.with_suffix(".idx").unlink()
    pack_dir = repo / ".git" / "objects" / "pack"
    for ext in ("pack", "idx"):
        (repo / f"refpack-{stem}.{ext}").rename(pack_dir / f"pack-{stem}.{ext}")
    for d, value in expected.items():
        assert commit_epoch(repo / d) == value, d


def test_no_repository_and_dot_git_file_or_symlink(tmp_path: Path) -> None:
    assert commit_epoch(tmp_path) is None
    hostile = hostile_repo(tmp_path / "real", tmp_path / "markers")
    tree = gitdir_file_tree(tmp_path / "worktree", hostile.repo / ".git")
    assert read_epoch(tree).value is None
    assert "not followed" in (read_epoch(tree).note or "")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".git").symlink_to(hostile.repo / ".git")
    assert read_epoch(linked).value is None
    assert hostile.fired() == []


def test_within_stops_the_search_for_a_repository(tmp_path: Path) -> None:
    hostile = hostile_repo(tmp_path / "repo", tmp_path / "markers")
    assert commit_epoch(hostile.repo / "crate", within=hostile.repo / "crate") is None
    assert commit_epoch(hostile.repo / "crate", within=hostile.repo) == hostile.sub_epoch


def test_a_symlinked_objects_dir_or_ref_is_not_followed(tmp_path: Path) -> None:
    hostile = hostile_repo(tmp_path / "repo", tmp_path / "markers")
    git = hostile.repo / ".git"
    head = (git / "refs" / "heads" / "main").read_text()
    (git / "refs" / "heads" / "main").unlink()
    (git / "refs" / "heads" / "main").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text(head)
    assert commit_epoch(hostile.repo) is None


def _loose(git: Path, oid: str, raw: bytes) -> None:
    path = git / "objects" / oid[:2] / oid[2:]
    path.chmod(0o644)
    path.write_bytes(raw)


def test_corrupt_and_hostile_objects_end_in_none_or_head_time(tmp_path: Path) -> None:
    hostile = hostile_repo(tmp_path / "repo", tmp_path / "markers")
    git = hostile.repo / ".git"
    # The config is hostile now: git is not run on this tree again, farm's reader is.
    repo = Repo(os.open(git, os.O_RDONLY | os.O_DIRECTORY))
    head = repo.head()
    parent = repo.commit(head).parents[0]
    os.close(repo.fd)
    # A parent declaring 2**40 bytes: refused without allocating them.
    _loose(git, parent, zlib.compress(b"commit 1099511627776\0" + b"x" * 100))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    epoch = read_epoch(hostile.repo / "crate")
    assert epoch.value == hostile.epoch and "HEAD" in (epoch.note or "")
    # Zip bombs: 1 GiB of zeros compresses to about 1 MiB. Declared as such, it is
    # refused from its header; declared small, inflation stops just past that size.
    for declared in (b"1073741824", b"1000"):
        bomb = zlib.compressobj()
        raw = bomb.compress(b"commit " + declared + b"\0")
        raw += b"".join(bomb.compress(bytes(1 << 20)) for _ in range(1024)) + bomb.flush()
        _loose(git, parent, raw)
        assert read_epoch(hostile.repo / "crate").value == hostile.epoch
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 3 * MAX_OBJECT // 1024
    # Bad zlib in HEAD itself: no answer at all.
    _loose(git, head, b"not zlib at all")
    epoch = read_epoch(hostile.repo)
    assert epoch.value is None and "zlib" in (epoch.note or "")
    assert hostile.fired() == []


def test_corrupt_pack_is_an_error_not_a_crash(tmp_path: Path) -> None:
    hostile = hostile_repo(tmp_path / "repo", tmp_path / "markers", packed=True)
    (pack,) = (hostile.repo / ".git" / "objects" / "pack").glob("*.pack")
    data = bytearray(pack.read_bytes())
    pack.chmod(0o644)
    # Every object's header claims a huge size: each read stops at the cap.
    offset = 12
    data[offset] = data[offset] | 0x80
    data[offset + 1 : offset + 1] = b"\xff\xff\xff\xff\x7f"
    pack.write_bytes(bytes(data))
    assert read_epoch(hostile.repo).value is None
    pack.write_bytes(b"PACK" + struct.pack(">II", 2, 3) + os.urandom(200))
    assert read_epoch(hostile.repo).value is None


def test_resolve_refuses_nothing_new_and_runs_nothing(tmp_path: Path) -> None:
    """resolve() reads Cargo.toml and the repository; a hostile tree runs no program."""
    hostile = hostile_repo(tmp_path / "repo", tmp_path / "markers")
    (hostile.repo / "crate" / "Cargo.toml").write_text('[package]\nname = "x"\n')
    script(hostile.repo / "crate" / "cargo", hostile.markers, "cargo")
    with pytest.raises(SpecError):  # no binary: outputs must be declared
        resolve(build_spec({"source": str(hostile.repo / "crate")}))
    assert hostile.fired() == []


def test_a_history_past_the_commit_cap_falls_back_to_head_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _history(repo)
    head_time = int(clean_git(repo, "log", "-1", "--format=%ct"))  # the empty commit's
    monkeypatch.setattr("farm.epoch.MAX_COMMITS", 3)
    epoch = read_epoch(repo / "a" / "deep")
    assert epoch.value == head_time != git_log_epoch(repo / "a" / "deep")
    assert "longer than 3 commits" in (epoch.note or "") and "HEAD" in (epoch.note or "")

"""The verified cache: what goes into the key, what is refused, and what a hit re-checks."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.cache import Cache, cache_key, cacheable, uncacheable_reason
from farm.gc import GRACE_SECONDS, collect_garbage
from farm.policy import BuildDirs, sandbox_for
from farm.provenance import attest
from farm.records import Artifact, BuildRecord, ReproVerdict, Status
from farm.settings import Settings
from farm.snapshot import digest, snapshot
from farm.spec import build_spec
from farm.store import Store


def make_record(store: Store, build_id: str, data: bytes = b"artifact", **fields) -> BuildRecord:
    sha, size = store.put_bytes(data)
    base = {
        "id": build_id,
        "status": Status.SUCCEEDED,
        "exit_code": 0,
        "tenant": "t",
        "image": "i",
        "runtime": "runsc",
        "spec": {},
        "created_at": datetime.now(UTC),
        "artifacts": [Artifact(path="out/x", sha256=sha, size=size)],
    }
    record = BuildRecord(**{**base, **fields})
    store.save(record)
    src = store.home.parent / "src"
    src.mkdir(exist_ok=True)
    attest(record, build_spec({"source": str(src), "argv": ["true"]}), store, store.home)
    return record


def verdict(reproducible: bool, runs: int = 2) -> ReproVerdict:
    return ReproVerdict(
        reproducible=reproducible,
        result="reproducible" if reproducible else "unreproducible",
        runs=runs,
        builds=["a", "b"],
        variations=[],
        differing=[] if reproducible else ["out/x"],
        checked_at=datetime.now(UTC),
    )


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    home = tmp_path / "home"
    return Cache(home, Store(home))


def key_of(tmp_path: Path, runtime: str = "runsc", image: str = "sha256:img", **spec) -> str:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "main.c").write_text(spec.pop("content", "int main(){}"))
    built = build_spec({"source": str(src), "argv": ["make"], "outputs": ["out/**"], **spec})
    settings = Settings(home=tmp_path / "home")
    sandbox = sandbox_for(built, "any-id", BuildDirs(tmp_path / "w"), settings)
    return cache_key(built, sandbox, source_digest=digest(src), image_id=image, runtime=runtime)


def test_key_covers_every_input_and_nothing_per_build(tmp_path: Path) -> None:
    base = key_of(tmp_path)
    assert key_of(tmp_path) == base  # a new build id or work dir does not change it
    variants = [
        key_of(tmp_path, content="int main(){return 1;}"),  # source
        key_of(tmp_path, image="sha256:other"),  # image digest
        key_of(tmp_path, argv=["make", "all"]),  # argv
        key_of(tmp_path, env={"OPT": "1"}),  # env
        key_of(tmp_path, outputs=["out/bin"]),  # outputs spec
        key_of(tmp_path, resources={"memory": "1g"}),  # policy: limits
        key_of(tmp_path, runtime="runsc-observed"),  # policy: runtime
        key_of(tmp_path, source_date_epoch=5),  # normalised env
        key_of(tmp_path, tenant="other"),  # tenants never share entries
        key_of(tmp_path, timeout_seconds=60),  # any other spec field
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_digest_without_copy_equals_the_snapshot_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.rs").write_text("fn a() {}")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "link").symlink_to("sub/a.rs")
    assert digest(src) == snapshot(src, tmp_path / "copy", 1_700_000_000)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"status": Status.FAILED, "exit_code": 1}, "failed"),
        ({"status": Status.TIMED_OUT, "exit_code": None}, "timed_out"),
        ({"insecure_runtime": True, "runtime": "runc"}, "not gVisor"),
        ({"blocked_actions": [{"kind": "network"}]}, "blocked or suspicious"),
        ({"reproducibility": verdict(False)}, "unreproducible"),
        ({"sinkhole_unready": "the resolver was late"}, "name lookups are unproven"),
    ],
)
def test_unclean_results_are_never_stored(cache: Cache, fields: dict, reason: str) -> None:
    record = make_record(cache.store, "b1", **fields)
    assert reason in (uncacheable_reason(record) or "")
    assert not cache.offer("sha256:k", record)
    assert cache.lookup("sha256:k") is None


def test_a_clean_result_is_served_until_it_stops_being_clean(cache: Cache) -> None:
    record = make_record(cache.store, "b1")
    assert cacheable(record) and cache.offer("sha256:k", record)
    assert cache.lookup("sha256:k").id == "b1"
    # The integrator's quarantine (or any later finding) lands on the record: no more hits.
    record.blocked_actions = [{"kind": "network"}]
    cache.store.save(record)
    assert cache.lookup("sha256:k") is None
    assert cache.build_ids() == set()  # and the entry is gone


def test_a_record_without_matching_signed_provenance_is_a_miss(cache: Cache) -> None:
    record = make_record(cache.store, "b1")
    other = make_record(cache.store, "b2", data=b"another artifact")
    cache.offer("sha256:k", record)
    assert cache.lookup("sha256:k") is not None
    # An index edited to point at a poisoned blob: the signed subjects no longer match.
    record.artifacts = other.artifacts
    cache.store.save(record)
    assert cache.lookup("sha256:k") is None
    cache.offer("sha256:k", other)
    other.provenance_sha256 = None  # never attested: never served
    cache.store.save(other)
    assert cache.lookup("sha256:k") is None


def test_an_altered_blob_is_a_miss_not_a_hit(cache: Cache) -> None:
    record = make_record(cache.store, "b1", data=b"the real artifact")
    cache.offer("sha256:k", record)
    blob = cache.store.blob_path(record.artifacts[0].sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"poisoned")
    assert cache.lookup("sha256:k") is None


def test_a_check_request_needs_an_entry_verified_that_often(cache: Cache) -> None:
    cache.offer("sha256:k", make_record(cache.store, "plain"))
    assert cache.lookup("sha256:k", min_runs=2) is None
    cache.offer("sha256:k", make_record(cache.store, "checked", reproducibility=verdict(True)))
    assert cache.lookup("sha256:k", min_runs=2).id == "checked"
    # A later unchecked build does not replace a verified entry.
    assert not cache.offer("sha256:k", make_record(cache.store, "plain2"))
    assert cache.lookup("sha256:k").id == "checked"


def test_prune_bounds_the_cache_and_gc_keeps_only_what_it_holds(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    store = Store(settings.home)
    cache = Cache(settings.home, store)
    old = make_record(store, "old", data=b"o" * 1000)
    new = make_record(store, "new", data=b"n" * 1000)
    cache.offer("sha256:old", old)
    time.sleep(0.01)  # ordering of last_used, not a time limit
    cache.offer("sha256:new", new)
    assert cache.prune(max_bytes=1500) == (1, 1000)
    assert cache.build_ids() == {"new"}
    long_ago = time.time() - 2 * GRACE_SECONDS
    for record in (old, new):
        os.utime(store.blob_path(record.artifacts[0].sha256), (long_ago, long_ago))
    collect_garbage(store, settings, keep=0, pinned=cache.build_ids())
    assert [r.id for r in store.list()] == ["new"]  # keep=0, but the cache pins it
    assert store.blob_path(new.artifacts[0].sha256).exists()
    assert not store.blob_path(old.artifacts[0].sha256).exists()


def test_farm_gc_bounds_the_cache_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from farm.cli import main

    home = tmp_path / "home"
    store = Store(home)
    cache = Cache(home, store)
    cache.offer("sha256:a", make_record(store, "a", data=b"a" * 1000))
    monkeypatch.setenv("FARM_HOME", str(home))
    assert main(["gc", "--keep", "0", "--cache-max-size", "10k"]) == 0
    assert "dropped 0 entries" in capsys.readouterr().out
    assert [r.id for r in store.list()] == ["a"]  # pinned by the cache despite --keep 0
    assert main(["gc", "--keep", "0", "--cache-max-size", "0"]) == 0
    assert "dropped 1 entries (1000 bytes" in capsys.readouterr().out
    assert store.list() == [] and cache.build_ids() == set()
    assert main(["gc", "--cache-max-size", "lots"]) == 2
    assert "--cache-max-size: 'lots' is not a size" in capsys.readouterr().err

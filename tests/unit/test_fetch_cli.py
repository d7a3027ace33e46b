"""``farm fetch`` as the cluster's fetch Job and a user run it (a real process, a real
registry on 127.0.0.1), and the operator's registries: no third-party code runs in the
fetch phase, errors exit with the documented codes, a spec can only name a registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import InputError, SpecError
from farm.fetch.registry import load_registries
from farm.runner import Runner
from farm.settings import Settings
from farm.spec import build_spec
from tests.crates import make_crate, manifest
from tests.registry import TestRegistry, serve
from tests.unit.test_fetch_phase import project

ROOT = Path(__file__).resolve().parents[2]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry() -> Iterator[TestRegistry]:
    with serve(TestRegistry()) as reg:
        yield reg


def farm(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "FARM_HOME": str(tmp_path / "home"),
        "HOME": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def marker_crate(marker: Path) -> bytes:
    """A crate whose build script and proc macro would each leave a marker if run."""
    build_rs = f'fn main() {{ std::fs::write("{marker}.build", b"ran").unwrap(); }}\n'
    lib_rs = (
        "use proc_macro::TokenStream;\n#[proc_macro]\npub fn m(_: TokenStream) -> TokenStream "
        f'{{ std::fs::write("{marker}.macro", b"ran").unwrap(); TokenStream::new() }}\n'
    )
    body = 'build = "build.rs"\n[lib]\nproc-macro = true\n'
    files = {
        "build.rs": build_rs.encode(),
        "src/lib.rs": lib_rs.encode(),
        "Cargo.toml": manifest("marker", "0.1.0", body),
    }
    return make_crate("marker", "0.1.0", files)


def test_no_third_party_code_runs_in_the_fetch_phase(
    tmp_path: Path, registry: TestRegistry
) -> None:
    marker = tmp_path / "MARKER"
    crate = marker_crate(marker)
    registry.crates[("marker", "0.1.0")] = crate
    src = project(tmp_path / "app", [("marker", "0.1.0", _sha(crate))])
    # The project's own build script, too, would leave one.
    (src / "build.rs").write_text(f'fn main() {{ std::fs::write("{marker}.app", b"").unwrap(); }}')
    done = farm(
        tmp_path, "fetch", str(src), "--dest", str(tmp_path / "out"), "--registry", registry.index
    )
    assert done.returncode == 0, done.stderr
    assert f"marker 0.1.0 sha256:{_sha(crate)} (127-0-0-1)" in done.stdout
    vendored = tmp_path / "out" / "vendor" / "marker-0.1.0"
    assert b"std::fs::write" in (vendored / "build.rs").read_bytes()  # fetched, not run
    left = [p for p in tmp_path.rglob("MARKER*")] + list(Path("/tmp").glob(f"{marker.name}*"))
    assert left == []


def test_errors_exit_with_their_codes_and_say_what_to_do(
    tmp_path: Path, registry: TestRegistry
) -> None:
    crate = make_crate("serde", "1.0.152")
    src = project(tmp_path / "app", [("serde", "1.0.152", _sha(crate))])
    missing = farm(
        tmp_path, "fetch", str(src), "--dest", str(tmp_path / "a"), "--registry", registry.index
    )
    assert missing.returncode == 2
    assert "farm: error: serde 1.0.152: not in registry 127-0-0-1" in missing.stderr
    registry.crates[("serde", "1.0.152")] = make_crate("serde", "1.0.152", {"x": b"other"})
    mismatch = farm(
        tmp_path, "fetch", str(src), "--dest", str(tmp_path / "b"), "--registry", registry.index
    )
    assert mismatch.returncode == 1
    assert "serde 1.0.152: checksum mismatch (lock " in mismatch.stderr
    (src / "Cargo.lock").unlink()
    nolock = farm(
        tmp_path, "fetch", str(src), "--dest", str(tmp_path / "c"), "--registry", registry.index
    )
    assert nolock.returncode == 2 and "cargo generate-lockfile" in nolock.stderr


def test_fetch_json_lists_packages_and_mounts(tmp_path: Path, registry: TestRegistry) -> None:
    crate = make_crate("tiny", "0.1.0")
    registry.crates[("tiny", "0.1.0")] = crate
    src = project(tmp_path / "app", [("tiny", "0.1.0", _sha(crate))])
    done = farm(
        tmp_path,
        "fetch",
        str(src),
        "--dest",
        str(tmp_path / "out"),
        "--registry",
        registry.index,
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [(p["name"], p["sha256"]) for p in result["packages"]] == [("tiny", _sha(crate))]
    assert [m[1] for m in result["mounts"]] == ["/vendor", "/.cargo/config.toml"]


def test_a_spec_names_a_registry_and_never_gives_a_url(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(SpecError, match="registry"):
        build_spec({"source": str(tmp_path / "src"), "registry": "http://127.0.0.1:9/"})
    spec = build_spec({"source": str(tmp_path / "src"), "registry": "internal"})
    runner = Runner(Settings(home=tmp_path / "home", observe=False), None, None)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="'internal' is not one of this installation's registries"):
        runner.registry(spec)
    remote = farm(
        tmp_path,
        "build",
        str(tmp_path / "src"),
        "--server",
        "http://127.0.0.1:1",
        "--registry",
        "sparse+http://10.0.0.1/",
    )
    assert remote.returncode == 2 and "only the NAME of a registry" in remote.stderr


def test_operator_registries_file(tmp_path: Path) -> None:
    path = tmp_path / "registries.json"
    path.write_text(
        json.dumps(
            [{"name": "mirror", "index": "sparse+http://127.0.0.1:8080/index/", "token_file": "/t"}]
        )
    )
    registries = load_registries(path)
    assert registries["mirror"].token_file == Path("/t")
    assert (
        Settings.from_env({"FARM_HOME": str(tmp_path), "FARM_REGISTRIES": str(path)}).registries
        == registries
    )
    path.write_text(json.dumps([{"name": "a", "index": "http://x/"}]))
    with pytest.raises(InputError, match=r"entry 0: .*not a sparse index URL"):
        load_registries(path)
    path.write_text(json.dumps([{"name": "a", "index": "sparse+http://x/"}] * 2))
    with pytest.raises(InputError, match="'a' is named twice"):
        load_registries(path)


def test_serve_admits_only_the_operators_registry_names(tmp_path: Path) -> None:
    from farm.admission import Admission
    from farm.errors import NotAdmittedError

    admission = Admission(registries=frozenset({"mirror"}))
    src = tmp_path / "src"
    src.mkdir()
    ok = build_spec({"source": str(src), "argv": ["true"], "registry": "mirror"})
    admission.enforce(ok, "ask the operator")
    other = build_spec({"source": str(src), "argv": ["true"], "registry": "internal"})
    with pytest.raises(NotAdmittedError, match=r"'internal' is not one of .*configured: mirror"):
        admission.enforce(other, "ask the operator")
    assert Admission().check(other) == []  # a local build: its runner checks


def test_fetch_refuses_an_existing_dest_and_says_when_there_is_nothing(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "dest").mkdir()
    exists = farm(tmp_path, "fetch", str(tmp_path / "plain"), "--dest", str(tmp_path / "dest"))
    assert exists.returncode == 2 and "already exists" in exists.stderr
    nothing = farm(tmp_path, "fetch", str(tmp_path / "plain"), "--dest", str(tmp_path / "d2"))
    assert nothing.returncode == 0 and "nothing to fetch" in nothing.stderr


def test_a_cluster_build_names_a_registry_but_never_gives_a_url() -> None:
    from farm.k8s.resource import cluster_spec

    source = {"git": "https://example.org/r.git", "revision": "ab" * 20}
    assert cluster_spec({"source": source}).registry is None
    assert cluster_spec({"source": source, "registry": "mirror"}).registry == "mirror"
    with pytest.raises(SpecError, match=r"registry: "):
        cluster_spec({"source": source, "registry": "sparse+http://10.0.0.1/index/"})

"""Git dependencies in the fetch phase (farm.fetch.git, farm.ecosystems.cargo.gitpackage):
a real git repository made here, served over HTTP by farm's own server on 127.0.0.1,
fetched by its full commit id with git run with no configuration, vendored like cargo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import FetchError, LockfileError
from farm.fetch.cache import CrateCache
from farm.fetch.phase import fetch
from farm.fetch.registry import Registry
from tests.gitrepo import bare_repo
from tests.registry import TestRegistry, serve

LIB = b"pub fn hi() -> u32 { 7 }\n"


def _files(marker: Path, manifest: str = "") -> dict[str, bytes]:
    return {
        "Cargo.toml": (
            f'[package]\nname = "gitdep"\nversion = "0.2.0"\nedition = "2018"\n{manifest}'
        ).encode(),
        "src/lib.rs": LIB,
        "build.rs": f'fn main() {{ std::fs::write("{marker}", b"ran").unwrap(); }}\n'.encode(),
        "sub/Cargo.toml": b'[package]\nname = "other"\nversion = "1.0.0"\n',
        "sub/src/lib.rs": b"",
    }


@pytest.fixture
def registry() -> Iterator[TestRegistry]:
    with serve(TestRegistry()) as reg:
        yield reg


def _project(root: Path, url: str, commit: str, name: str = "gitdep") -> Path:
    root.mkdir()
    (root / "Cargo.toml").write_text('[package]\nname = "app"\nversion = "0.1.0"\n')
    (root / "Cargo.lock").write_text(
        'version = 3\n\n[[package]]\nname = "app"\nversion = "0.1.0"\n\n'
        f'[[package]]\nname = "{name}"\nversion = "0.2.0"\n'
        f'source = "git+{url}?branch=main#{commit}"\n'
    )
    return root


def _run(tmp_path: Path, registry: TestRegistry, src: Path, hosts: set[str]):
    reg = Registry(name="test", index=registry.index)
    cache = CrateCache(tmp_path / "cache")
    return fetch(src, tmp_path / "out", reg, cache, git_hosts=frozenset(hosts))


def test_git_dependency_is_fetched_by_commit_and_vendored(
    tmp_path: Path, registry: TestRegistry
) -> None:
    marker = tmp_path / "MARKER"
    bare, commit = bare_repo(tmp_path / "repo", _files(marker))
    registry.static["/git/repo.git/"] = bare
    url = f"http://127.0.0.1:{registry.port}/git/repo.git"
    src = _project(tmp_path / "app", url, commit)
    result = _run(tmp_path, registry, src, {"127.0.0.1"})
    vendored = tmp_path / "out" / "vendor" / "gitdep-0.2.0"
    sums = json.loads((vendored / ".cargo-checksum.json").read_text())
    assert sums["package"] is None
    assert sorted(sums["files"]) == ["Cargo.toml", "build.rs", "src/lib.rs"]  # not sub/
    assert (vendored / "src" / "lib.rs").read_bytes() == LIB
    [pkg] = result.packages
    assert (pkg.name, pkg.commit, pkg.sha256) == ("gitdep", commit, None)
    config = (tmp_path / "out" / "cargo-config.toml").read_text()
    assert f'[source.farm-git-1]\ngit = "{url}"\nbranch = "main"\n' in config
    assert not marker.exists()


def test_git_reads_no_configuration_of_the_user(
    tmp_path: Path, registry: TestRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare, commit = bare_repo(tmp_path / "repo", _files(tmp_path / "M"))
    registry.static["/git/repo.git/"] = bare
    url = f"http://127.0.0.1:{registry.port}/git/repo.git"
    evil = tmp_path / "evil-home"
    evil.mkdir()
    redirect = f'[url "http://127.0.0.1:1/"]\n\tinsteadOf = {url}\n'
    (evil / ".gitconfig").write_text(redirect)
    monkeypatch.setenv("HOME", str(evil))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(evil / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'url.http://127.0.0.1:1/.insteadOf'='{url}'")
    result = _run(tmp_path, registry, _project(tmp_path / "app", url, commit), {"127.0.0.1"})
    assert [p.commit for p in result.packages] == [commit]


def test_a_git_host_the_operator_did_not_allow_is_not_contacted(
    tmp_path: Path, registry: TestRegistry
) -> None:
    bare, commit = bare_repo(tmp_path / "repo", _files(tmp_path / "M"))
    registry.static["/git/repo.git/"] = bare
    src = _project(tmp_path / "app", f"http://127.0.0.1:{registry.port}/git/repo.git", commit)
    with pytest.raises(FetchError, match=r"gitdep 0.2.0: .* allow it with --git-host 127.0.0.1"):
        _run(tmp_path, registry, src, set())
    assert not [r for r in registry.requests if r.startswith("/git/")]


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/repo",
        "ssh://git@127.0.0.1/x",
        "ext::sh%20-c%20touch%20/tmp/pwned",
        "http://u@h/x",
    ],
)
def test_only_http_git_urls(tmp_path: Path, registry: TestRegistry, url: str) -> None:
    src = _project(tmp_path / "app", url, "ab" * 20)
    with pytest.raises(LockfileError, match="not an http"):
        _run(tmp_path, registry, src, {"127.0.0.1", "h"})


def test_short_commit_is_refused(tmp_path: Path, registry: TestRegistry) -> None:
    src = _project(tmp_path / "app", "http://127.0.0.1/x", "abc123")
    with pytest.raises(LockfileError, match="no full commit id"):
        _run(tmp_path, registry, src, {"127.0.0.1"})


def test_a_commit_the_repository_does_not_have(tmp_path: Path, registry: TestRegistry) -> None:
    bare, _ = bare_repo(tmp_path / "repo", _files(tmp_path / "M"))
    registry.static["/git/repo.git/"] = bare
    url = f"http://127.0.0.1:{registry.port}/git/repo.git"
    src = _project(tmp_path / "app", url, "ab" * 20)
    with pytest.raises(FetchError, match=f"gitdep 0.2.0: commit {'ab' * 20} not in {url}"):
        _run(tmp_path, registry, src, {"127.0.0.1"})


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("[dependencies]\nserde = { workspace = true }\n", "serde in .dependencies. inherits"),
        ('[dependencies]\nother = { path = "sub" }\n', "other in .dependencies. is a path"),
        ("[package.license]\nworkspace = true\n", "inherits from its workspace"),
    ],
)
def test_manifests_cargo_would_normalize_are_refused(
    tmp_path: Path, registry: TestRegistry, manifest: str, message: str
) -> None:
    files = _files(tmp_path / "M", manifest)
    if manifest.startswith("[package.license]"):
        files["Cargo.toml"] = files["Cargo.toml"].replace(b'edition = "2018"\n', b"")
    bare, commit = bare_repo(tmp_path / "repo", files)
    registry.static["/git/repo.git/"] = bare
    src = _project(tmp_path / "app", f"http://127.0.0.1:{registry.port}/git/repo.git", commit)
    with pytest.raises(FetchError, match=message):
        _run(tmp_path, registry, src, {"127.0.0.1"})


def test_links_in_the_package_are_refused(tmp_path: Path, registry: TestRegistry) -> None:
    bare, commit = bare_repo(
        tmp_path / "repo", _files(tmp_path / "M"), links={"src/secret": "/etc/shadow"}
    )
    registry.static["/git/repo.git/"] = bare
    src = _project(tmp_path / "app", f"http://127.0.0.1:{registry.port}/git/repo.git", commit)
    with pytest.raises(FetchError, match="src/secret is a symlink"):
        _run(tmp_path, registry, src, {"127.0.0.1"})
    assert not (tmp_path / "out" / "vendor" / "gitdep-0.2.0").exists()


def test_a_package_the_repository_does_not_hold(tmp_path: Path, registry: TestRegistry) -> None:
    bare, commit = bare_repo(tmp_path / "repo", _files(tmp_path / "M"))
    registry.static["/git/repo.git/"] = bare
    url = f"http://127.0.0.1:{registry.port}/git/repo.git"
    src = _project(tmp_path / "app", url, commit, name="absent")
    with pytest.raises(FetchError, match=r"absent 0.2.0: no Cargo.toml of package absent"):
        _run(tmp_path, registry, src, {"127.0.0.1"})

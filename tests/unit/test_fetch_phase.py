"""The fetch phase (farm.fetch) over real HTTP: a registry served by farm's own HTTP
server on 127.0.0.1 (tests/registry.py), real .crate bytes (crates.io's serde 1.0.152 from
Debian's orig tarball, and crates built here), a real crate cache on disk."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.ecosystems import BuildMount, Package
from farm.ecosystems.cargo.vendor import CRATES_IO_SOURCE
from farm.errors import (
    ChecksumMismatchError,
    CrateRejectedError,
    FetchError,
    LockfileError,
    PackageMissingError,
    RegistryUnreachableError,
)
from farm.fetch.cache import CrateCache
from farm.fetch.phase import fetch
from farm.fetch.registry import HttpCaps, Registry
from tests.crates import add_special, make_crate
from tests.debcrates import SERDE_SHA256, serde_crate
from tests.registry import Route, TestRegistry, serve


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def project(root: Path, packages: list[tuple[str, str, str]], lock: bool = True) -> Path:
    """A cargo project whose Cargo.lock names ``packages`` (name, version, checksum)."""
    root.mkdir()
    (root / "Cargo.toml").write_text('[package]\nname = "app"\nversion = "0.1.0"\n')
    if lock:
        text = 'version = 3\n\n[[package]]\nname = "app"\nversion = "0.1.0"\n'
        for name, version, checksum in packages:
            text += (
                f'\n[[package]]\nname = "{name}"\nversion = "{version}"\n'
                f'source = "{CRATES_IO_SOURCE}"\nchecksum = "{checksum}"\n'
            )
        (root / "Cargo.lock").write_text(text)
    return root


@pytest.fixture
def registry() -> Iterator[TestRegistry]:
    with serve(TestRegistry()) as reg:
        yield reg


@pytest.fixture(scope="session")
def serde() -> bytes:
    return serde_crate()


def _fetch(src: Path, dest: Path, reg: TestRegistry | Registry, cache: CrateCache, **kw: object):
    registry = reg if isinstance(reg, Registry) else Registry(name="test", index=reg.index)
    return fetch(src, dest, registry, cache, **kw)  # type: ignore[arg-type]


def test_real_serde_is_vendored_with_every_file_listed(
    tmp_path: Path, registry: TestRegistry, serde: bytes
) -> None:
    registry.crates[("serde", "1.0.152")] = serde
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    result = _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))
    vendored = tmp_path / "out" / "vendor" / "serde-1.0.152"
    sums = json.loads((vendored / ".cargo-checksum.json").read_text())
    assert sums["package"] == SERDE_SHA256
    on_disk = {
        str(p.relative_to(vendored))
        for p in vendored.rglob("*")
        if p.is_file() and p.name != ".cargo-checksum.json"
    }
    assert set(sums["files"]) == on_disk and len(on_disk) > 10
    for rel, digest in sums["files"].items():
        assert _sha((vendored / rel).read_bytes()) == digest
    [pkg] = result.packages
    assert (pkg.name, pkg.version, pkg.sha256, pkg.registry) == (
        "serde",
        "1.0.152",
        SERDE_SHA256,
        "test",
    )
    config = (tmp_path / "out" / "cargo-config.toml").read_text()
    assert 'replace-with = "farm-vendor"' in config and 'directory = "/vendor"' in config
    assert result.mounts == [
        (tmp_path / "out" / "vendor", "/vendor"),
        (tmp_path / "out" / "cargo-config.toml", "/.cargo/config.toml"),
    ]


def test_checksum_mismatch_names_the_crate_and_both_sums(
    tmp_path: Path, registry: TestRegistry
) -> None:
    impostor = make_crate("serde", "1.0.152", {"src/lib.rs": b"// not serde\n"})
    registry.crates[("serde", "1.0.152")] = impostor
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    cache = CrateCache(tmp_path / "cache")
    with pytest.raises(ChecksumMismatchError) as err:
        _fetch(src, tmp_path / "out", registry, cache)
    first = str(err.value).splitlines()[0]
    assert first == (
        f"serde 1.0.152: checksum mismatch (lock bb7d…, registry {_sha(impostor)[:4]}…); "
        "refusing to build"
    )
    assert SERDE_SHA256 in str(err.value) and _sha(impostor) in str(err.value)
    assert cache.get(_sha(impostor)) is None and cache.get(SERDE_SHA256) is None
    assert not (tmp_path / "out" / "vendor" / "serde-1.0.152").exists()


def test_missing_package(tmp_path: Path, registry: TestRegistry) -> None:
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    with pytest.raises(PackageMissingError) as err:
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))
    message = str(err.value)
    assert message.startswith("serde 1.0.152: not in registry test (sparse+http://127.0.0.1:")
    assert "/crates/serde/serde-1.0.152.crate answered 404" in message


def test_unreachable_registry_names_the_url_and_the_os_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    reg = Registry(name="gone", index=f"sparse+http://127.0.0.1:{port}/index/")
    with pytest.raises(RegistryUnreachableError) as err:
        _fetch(src, tmp_path / "out", reg, CrateCache(tmp_path / "cache"))
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/index/config.json" in message
    assert "Connection refused" in message and "cannot reach registry gone" in message


@pytest.mark.parametrize(
    "location",
    ["http://127.0.0.2:{port}/crates/x", "http://localhost:{port}/x", "http://127.0.0.1:1/x"],
)
def test_redirect_to_another_host_is_refused(
    tmp_path: Path, registry: TestRegistry, serde: bytes, location: str
) -> None:
    registry.crates[("serde", "1.0.152")] = serde
    registry.routes["/crates/serde/serde-1.0.152.crate"] = Route(
        302, {"Location": location.format(port=registry.port)}
    )
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    with pytest.raises(FetchError, match="outside its own hosts"):
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))
    assert registry.requests == ["/index/config.json", "/crates/serde/serde-1.0.152.crate"]


def test_redirect_within_the_registry_is_followed(
    tmp_path: Path, registry: TestRegistry, serde: bytes
) -> None:
    registry.routes["/crates/serde/serde-1.0.152.crate"] = Route(302, {"Location": "/blob/s"})
    registry.routes["/blob/s"] = Route(200, {}, serde)
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    result = _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))
    assert [p.name for p in result.packages] == ["serde"]


def test_dl_host_from_config_json_is_allowed_and_no_other(
    tmp_path: Path, registry: TestRegistry, serde: bytes
) -> None:
    with serve(TestRegistry(crates={("serde", "1.0.152"): serde})) as downloads:
        registry.dl = f"http://localhost:{downloads.port}/crates"  # cargo's default suffix
        downloads.routes["/crates/serde/1.0.152/download"] = Route(200, {}, serde)
        src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))
        assert downloads.requests == ["/crates/serde/1.0.152/download"]


def test_oversize_responses_are_refused(
    tmp_path: Path, registry: TestRegistry, serde: bytes
) -> None:
    registry.crates[("serde", "1.0.152")] = serde
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    with pytest.raises(FetchError, match=r"serde 1.0.152: .* bytes, above the 1000 cap"):
        _fetch(
            src, tmp_path / "a", registry, CrateCache(tmp_path / "c"), caps=HttpCaps(max_crate=1000)
        )
    registry.routes["/index/config.json"] = Route(200, {}, b" " * 70_000)
    with pytest.raises(FetchError, match=r"config.json: .* above the 65536 cap"):
        _fetch(src, tmp_path / "b", registry, CrateCache(tmp_path / "c"))


@pytest.mark.parametrize(
    "extra",
    [
        add_special("evil", tarfile.SYMTYPE, "/etc/shadow"),
        add_special("evil", tarfile.LNKTYPE, "/etc/shadow"),
        add_special("dev", tarfile.CHRTYPE),
    ],
    ids=["symlink", "hardlink", "device"],
)
def test_hostile_crate_with_a_matching_checksum_is_refused(
    tmp_path: Path, registry: TestRegistry, extra: object
) -> None:
    hostile = make_crate("evil", "1.0.0", extra=[extra])  # type: ignore[list-item]
    registry.crates[("evil", "1.0.0")] = hostile
    src = project(tmp_path / "app", [("evil", "1.0.0", _sha(hostile))])
    with pytest.raises(CrateRejectedError, match=r"evil 1.0.0: member 'evil-1.0.0/"):
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))
    assert not (tmp_path / "out" / "vendor" / "evil-1.0.0").exists()


def test_cache_is_reused_without_download_and_reverified(
    tmp_path: Path, registry: TestRegistry, serde: bytes
) -> None:
    registry.crates[("serde", "1.0.152")] = serde
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    cache = CrateCache(tmp_path / "cache")
    _fetch(src, tmp_path / "one", registry, cache)
    entry = tmp_path / "cache" / "sha256" / "bb" / SERDE_SHA256
    assert entry.read_bytes() == serde
    registry.requests.clear()
    again = _fetch(src, tmp_path / "two", registry, cache)
    assert registry.requests == [] and again.packages[0].cached
    entry.write_bytes(b"corrupted")  # a damaged entry is never served: fetched again
    third = _fetch(src, tmp_path / "three", registry, cache)
    assert not third.packages[0].cached and entry.read_bytes() == serde


def test_no_lockfile_says_how_to_make_one(tmp_path: Path, registry: TestRegistry) -> None:
    src = project(tmp_path / "app", [], lock=False)
    with pytest.raises(LockfileError, match=r"cargo generate-lockfile.*--resolve-lock"):
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))
    assert not (tmp_path / "out").exists()


def test_lockfile_that_is_a_link_is_not_followed(tmp_path: Path, registry: TestRegistry) -> None:
    src = project(tmp_path / "app", [], lock=False)
    (tmp_path / "secret.lock").write_text("version = 3\n")
    (src / "Cargo.lock").symlink_to(tmp_path / "secret.lock")
    with pytest.raises(LockfileError, match="cannot open it"):
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))


def test_git_dependencies_need_an_allowed_host(tmp_path: Path, registry: TestRegistry) -> None:
    src = project(tmp_path / "app", [])
    with (src / "Cargo.lock").open("a") as fh:
        fh.write(
            '\n[[package]]\nname = "dep"\nversion = "0.2.0"\n'
            'source = "git+https://example.org/dep#0123456789abcdef0123456789abcdef01234567"\n'
        )
    with pytest.raises(
        FetchError,
        match=r"dep 0.2.0: git dependency from example.org, which is not an allowed git host",
    ):
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))


def test_token_goes_only_to_the_registry_and_never_into_messages(
    tmp_path: Path, registry: TestRegistry
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    reg = Registry(name="private", index=registry.index, token_file=token_file)
    with pytest.raises(PackageMissingError) as err:
        _fetch(src, tmp_path / "out", reg, CrateCache(tmp_path / "cache"))
    assert "s3cret" not in str(err.value)
    assert registry.auth == ["s3cret-token", "s3cret-token"]


def test_vendored_bytes_are_bounded(tmp_path: Path, registry: TestRegistry, serde: bytes) -> None:
    registry.crates[("serde", "1.0.152")] = serde
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    with pytest.raises(FetchError, match=r"serde 1.0.152: the vendored dependencies pass 1000"):
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"), max_bytes=1000)


def test_only_path_packages_make_an_empty_vendor(tmp_path: Path, registry: TestRegistry) -> None:
    src = project(tmp_path / "app", [])
    result = _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"))
    assert result.packages == [] and os.listdir(tmp_path / "out" / "vendor") == []
    assert registry.requests == []


def test_oversize_chunked_response_is_cut_off(
    tmp_path: Path, registry: TestRegistry, serde: bytes
) -> None:
    chunked = b"".join(b"%x\r\n%s\r\n" % (1000, b"z" * 1000) for _ in range(5)) + b"0\r\n\r\n"
    registry.routes["/crates/serde/serde-1.0.152.crate"] = Route(
        200, {"Transfer-Encoding": "chunked"}, chunked
    )
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    caps = HttpCaps(max_crate=1500)
    with pytest.raises(FetchError, match=r"serde 1.0.152: .* sent more than 1500 bytes"):
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "cache"), caps=caps)


def test_a_registry_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
        reg = Registry(name="mute", index=f"sparse+http://127.0.0.1:{port}/index/")
        caps = HttpCaps(timeout_seconds=0.5)
        with pytest.raises(
            RegistryUnreachableError, match=r"cannot reach registry mute.*timed out"
        ):
            _fetch(src, tmp_path / "out", reg, CrateCache(tmp_path / "cache"), caps=caps)


class _Npm:
    """A second ecosystem, as npm would be added: the phase needs nothing else."""

    name = "npm"

    def detect(self, source_fd: int) -> bool:
        return True

    def packages(self, source_fd: int) -> list[Package]:
        data = make_crate("left-pad", "1.3.0")
        return [Package("left-pad", "1.3.0", _sha(data), "registry+https://npm.example/")]

    def vendor(self, package: Package, data: bytes, dest: Path) -> int:
        (dest / "node_modules").mkdir(exist_ok=True)
        (dest / "node_modules" / f"{package.name}.tgz").write_bytes(data)
        return len(data)

    def finish(self, packages: list[Package], dest: Path) -> list[BuildMount]:
        return [BuildMount(dest / "node_modules", "/src/node_modules")]


def test_another_ecosystem_plugs_in_through_the_protocol(
    tmp_path: Path, registry: TestRegistry
) -> None:
    registry.crates[("left-pad", "1.3.0")] = make_crate("left-pad", "1.3.0")
    src = project(tmp_path / "app", [])
    seen: list[str] = []
    result = _fetch(
        src,
        tmp_path / "out",
        registry,
        CrateCache(tmp_path / "cache"),
        kinds=[_Npm()],
        inspect=lambda eco: seen.append(eco.name),
    )
    assert seen == ["npm"]
    assert [(p.ecosystem, p.name) for p in result.packages] == [("npm", "left-pad")]
    assert result.mounts == [(tmp_path / "out" / "node_modules", "/src/node_modules")]


def test_inspect_hook_sees_the_cargo_lock_before_any_download(
    tmp_path: Path, registry: TestRegistry
) -> None:
    from farm.ecosystems.cargo.vendor import Cargo
    from farm.errors import InputError

    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])

    def refuse_v3(eco: object) -> None:
        assert isinstance(eco, Cargo) and eco.lock is not None
        raise InputError(f"Cargo.lock v{eco.lock.version}: this image's cargo cannot read it")

    with pytest.raises(InputError, match="v3: this image"):
        _fetch(src, tmp_path / "out", registry, CrateCache(tmp_path / "c"), inspect=refuse_v3)
    assert registry.requests == [] and not (tmp_path / "out").exists()

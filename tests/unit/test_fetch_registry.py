"""The registry model and cargo's download-URL rule (farm.fetch.registry)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from farm.errors import InputError
from farm.fetch.registry import Registry, RegistryClient, crate_url, registry_from_cli

SUM = "ab" * 32


@pytest.mark.parametrize(
    ("template", "url"),
    [
        (
            "https://static.crates.io/crates",
            "https://static.crates.io/crates/serde/1.0.152/download",
        ),
        ("http://h/c/{crate}/{crate}-{version}.crate", "http://h/c/serde/serde-1.0.152.crate"),
        ("http://h/{prefix}/{lowerprefix}/{crate}", "http://h/se/rd/se/rd/serde"),
        ("http://h/{sha256-checksum}", f"http://h/{SUM}"),
    ],
)
def test_cargo_download_url_rule(template: str, url: str) -> None:
    assert crate_url(template, "serde", "1.0.152", SUM) == url


def test_prefixes_by_name_length() -> None:
    t = "http://h/{prefix}/{lowerprefix}"
    assert crate_url(t, "a", "1.0.0", SUM) == "http://h/1/1"
    assert crate_url(t, "ab", "1.0.0", SUM) == "http://h/2/2"
    assert crate_url(t, "Abc", "1.0.0", SUM) == "http://h/3/A/3/a"


@pytest.mark.parametrize(
    "index",
    [
        "https://index.crates.io/",  # not sparse+
        "registry+https://github.com/rust-lang/crates.io-index",
        "sparse+file:///etc/",
        "sparse+http://user:pw@host/",
        "sparse+http:///nohost/",
        "sparse+http://h/?q=1",
    ],
)
def test_only_plain_sparse_http_indexes(index: str) -> None:
    with pytest.raises(ValidationError, match="not a sparse index URL"):
        Registry(name="x", index=index)
    with pytest.raises(InputError, match=r"--registry: .*not a sparse index URL"):
        registry_from_cli(index)


def test_cli_registry_is_named_after_its_host() -> None:
    reg = registry_from_cli("sparse+http://127.0.0.1:8080/index")
    assert (reg.name, reg.index) == ("127-0-0-1", "sparse+http://127.0.0.1:8080/index/")
    assert Registry().index == "sparse+https://index.crates.io/"


@pytest.mark.parametrize("content", [b"", b"a\nb\n", b"QZX\x00QZX", b"x" * 5000])
def test_token_file_must_be_one_printable_line(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "t").write_bytes(content)
    reg = Registry(name="p", index="sparse+http://127.0.0.1:1/", token_file=tmp_path / "t")
    with pytest.raises(InputError, match=r"token file .* printable ASCII") as err:
        RegistryClient(reg)
    assert "QZX" not in str(err.value)


def test_missing_token_file(tmp_path: Path) -> None:
    reg = Registry(name="p", index="sparse+http://127.0.0.1:1/", token_file=tmp_path / "none")
    with pytest.raises(InputError, match=r"registry p: token file .*No such file"):
        RegistryClient(reg)

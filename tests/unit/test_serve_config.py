"""`farm serve`'s guards that need no Docker: loopback-only without tokens, the tokens
file (format, permissions, token length) and where submitted sources may live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.api import check_bind
from farm.errors import InputError
from farm.service import SourcePolicy
from farm.spec import build_spec
from farm.tokens import Tokens, load_tokens


def tokens_file(tmp_path: Path, data: object, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(data))
    path.chmod(mode)
    return path


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.invalid"])
def test_no_bind_beyond_loopback_without_tokens(host: str) -> None:
    with pytest.raises(InputError, match="refusing to listen beyond loopback without --tokens"):
        check_bind(host, None)
    check_bind(host, Tokens({"t" * 16: "a"}))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_tokens(host: str) -> None:
    check_bind(host, None)


def test_tokens_map_bearer_headers_to_tenants(tmp_path: Path) -> None:
    a, b1, b2 = "a" * 20, "b" * 20, "B" * 20
    tokens = load_tokens(tokens_file(tmp_path, {"tenants": {"alpha": a, "beta": [b1, b2]}}))
    assert tokens.tenant(f"Bearer {a}") == "alpha"
    assert tokens.tenant(f"bearer {b2}") == "beta"
    for header in (None, "", a, f"Basic {a}", f"Bearer {a[:-1]}", "Bearer "):
        assert tokens.tenant(header) is None


@pytest.mark.parametrize(
    ("data", "mode", "message"),
    [
        ({"tenants": {"alpha": "a" * 20}}, 0o644, "chmod 600"),
        ({"tenants": {"alpha": "short"}}, 0o600, "shorter than 16"),
        ({"tenants": {"Alpha!": "a" * 20}}, 0o600, "tenant 'Alpha!'"),
        ({"tenants": {"a": "x" * 20, "b": "x" * 20}}, 0o600, "two tenants"),
        ({"alpha": "a" * 20}, 0o600, "expected"),
    ],
)
def test_bad_tokens_files_say_what_to_fix(
    tmp_path: Path, data: object, mode: int, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        load_tokens(tokens_file(tmp_path, data, mode))


def test_sources_must_lie_under_the_root_and_per_tenant_under_its_own_dir(tmp_path: Path) -> None:
    for name in ("alpha/proj", "beta/proj", "outside"):
        (tmp_path / "root" / name).mkdir(parents=True)
    (tmp_path / "root" / "alpha" / "link").symlink_to(tmp_path / "root" / "beta" / "proj")
    spec = build_spec({"source": str(tmp_path / "root" / "beta" / "proj"), "tenant": "alpha"})
    SourcePolicy(tmp_path / "root").check(spec)
    with pytest.raises(InputError, match="outside this service's source directory"):
        SourcePolicy(tmp_path / "root", per_tenant=True).check(spec)
    via_link = build_spec({"source": str(tmp_path / "root" / "alpha" / "link"), "tenant": "alpha"})
    with pytest.raises(InputError, match="outside"):
        SourcePolicy(tmp_path / "root", per_tenant=True).check(via_link)
    with pytest.raises(InputError, match="outside"):
        SourcePolicy(tmp_path / "root" / "alpha").check(
            build_spec({"source": str(tmp_path / "root" / "outside")})
        )

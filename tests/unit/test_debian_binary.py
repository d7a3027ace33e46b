"""farm.mirror.debian_binary offline: the repack is deterministic, the .deb reader refuses
links and paths out of the registry dir, and Debian's relation fields are read as apt does.
The same code against Debian's real archive is in tests/realworld/test_debian_tier.py."""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile

import pytest

from farm.mirror.debarchive import DebianArchiveError, parse_stanzas
from farm.mirror.debian_binary import CRATE_MTIME, _data_tar, _relations, registry_dirs, repack

FILES = {
    "src/lib.rs": (b"pub fn f() {}\n", False),
    "Cargo.toml": (b"[package]\n", False),
    "x.sh": (b"#!", True),
}


def test_repack_is_byte_identical_for_the_same_files_in_any_order() -> None:
    reordered = dict(reversed(list(FILES.items())))
    assert repack("demo-1.0.0", FILES) == repack("demo-1.0.0", reordered)
    assert repack("demo-1.0.0", FILES) != repack("demo-1.0.1", FILES)


def test_repack_members_are_sorted_with_fixed_metadata() -> None:
    data = repack("demo-1.0.0", FILES)
    assert data[4:8] == b"\0\0\0\0"  # gzip MTIME field: 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "demo-1.0.0/Cargo.toml",
        "demo-1.0.0/src/lib.rs",
        "demo-1.0.0/x.sh",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (CRATE_MTIME, 0, 0, "", "")
    }
    assert [m.mode for m in members] == [0o644, 0o644, 0o755]


def _tar(*members: tuple[str, bytes | None, bytes]) -> bytes:
    """(name, type, payload): type None = regular file, else a TarInfo type."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind is None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = kind
                info.linkname = payload.decode()
                tar.addfile(info)
    return out.getvalue()


REG = "./usr/share/cargo/registry/demo-1.0.0"


def test_registry_dirs_takes_only_the_crate_and_drops_debians_checksum_file() -> None:
    data = _tar(
        ("./usr/share/doc/x/copyright", None, b"c"),
        (f"{REG}/Cargo.toml", None, b"[package]"),
        (f"{REG}/.cargo-checksum.json", None, b"{}"),
        (f"{REG}/src/lib.rs", None, b"fn"),
    )
    assert registry_dirs(data, "t.deb") == {
        "demo-1.0.0": {"Cargo.toml": (b"[package]", False), "src/lib.rs": (b"fn", False)}
    }


@pytest.mark.parametrize(
    "member",
    [
        (f"{REG}/src/link.rs", tarfile.SYMTYPE, b"/etc/passwd"),
        (f"{REG}/src/hard.rs", tarfile.LNKTYPE, b"./etc/passwd"),
        (f"{REG}/fifo", tarfile.FIFOTYPE, b""),
        (f"{REG}/dev", tarfile.CHRTYPE, b""),
        (f"{REG}/../../../../etc/x", None, b"x"),
    ],
)
def test_registry_dirs_refuses_links_devices_and_escapes(
    member: tuple[str, bytes | None, bytes],
) -> None:
    with pytest.raises(DebianArchiveError):
        registry_dirs(_tar((f"{REG}/Cargo.toml", None, b"[package]"), member), "t.deb")


def _ar(*members: tuple[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, body in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    return out


def test_data_tar_reads_xz_and_gzip_and_refuses_other_compressions() -> None:
    inner = _tar((f"{REG}/Cargo.toml", None, b"[package]"))
    assert (
        _data_tar(_ar(("debian-binary", b"2.0\n"), ("data.tar.xz", lzma.compress(inner))), "t")
        == inner
    )
    assert (
        _data_tar(_ar(("debian-binary", b"2.0\n"), ("data.tar.gz", gzip.compress(inner))), "t")
        == inner
    )
    with pytest.raises(DebianArchiveError, match=r"data\.tar\.zst is not supported"):
        _data_tar(_ar(("data.tar.zst", b"x")), "t")
    with pytest.raises(DebianArchiveError, match=r"not a \.deb"):
        _data_tar(b"PK\3\4", "t")


def test_relations_keep_librust_alternatives_and_drop_profiles_and_others() -> None:
    field = (
        "debhelper (>= 12), librust-clap-2+default-dev (>= 2.33-~~) <!nocheck>,\n"
        " librust-a-dev | librust-b-1-dev (<< 2), libgit2-dev, cargo:native"
    )
    assert _relations(field) == ["librust-clap-2+default-dev", "librust-a-dev|librust-b-1-dev"]


def test_parse_stanzas_joins_continuation_lines() -> None:
    text = "Package: a\nSHA256:\n x 1 f\n y 2 g\n\nPackage: b\n"
    assert parse_stanzas(text) == [{"Package": "a", "SHA256": "\nx 1 f\ny 2 g"}, {"Package": "b"}]

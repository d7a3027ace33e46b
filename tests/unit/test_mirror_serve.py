"""``farm mirror serve`` (farm.mirror.serve) over real HTTP on 127.0.0.1 with real
crates.io crates: config.json carries the server's own address, the index and crate
URLs cargo derives from it answer with the mirror's bytes, GET and HEAD agree, and no
spelling of a path (``..``, ``%2e%2e``, ``//``, ``\\``, NUL, an encoded ``/``, a symlink
planted in the mirror) ever yields a file outside the mirror's own layout."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import InputError, MirrorError
from farm.mirror.serve import MirrorServer
from farm.mirror.store import Mirror
from tests.realcrates import REAL_CRATES

SECRET = b"secret outside the mirror"


@pytest.fixture
def server(tmp_path: Path, real_crates: dict[str, bytes]) -> Iterator[MirrorServer]:
    mirror = Mirror(tmp_path / "mirror").create()
    for name in ("serde", "fnv", "cfg-if"):
        mirror.add_crate(real_crates[name], REAL_CRATES[name].origin)
    (tmp_path / "secret").write_bytes(SECRET)
    srv = MirrorServer(mirror, "127.0.0.1", 0).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv: MirrorServer, target: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """One raw request: the target goes on the wire exactly as written."""
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_config_json_points_at_this_server(server: MirrorServer) -> None:
    status, headers, body = request(server, "/index/config.json")
    host, port = server.server_address[:2]
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "dl": f"http://{host}:{port}/crates/{{crate}}/{{crate}}-{{version}}.crate"
    }
    assert server.index_url == f"sparse+http://{host}:{port}/index/"


def test_index_and_crate_urls_serve_the_mirror_bytes(server: MirrorServer) -> None:
    status, _, body = request(server, "/index/se/rd/serde")
    assert status == 200
    (line,) = [json.loads(t) for t in body.decode().splitlines()]
    assert line["cksum"] == REAL_CRATES["serde"].cksum and line["vers"] == "1.0.152"
    assert (
        request(server, "/index/3/f/fnv")[2] == (server.mirror.index_dir / "3/f/fnv").read_bytes()
    )
    for crate in (REAL_CRATES["serde"], REAL_CRATES["fnv"], REAL_CRATES["cfg-if"]):
        url = f"/crates/{crate.name}/{crate.name}-{crate.version}.crate"
        status, headers, body = request(server, url)
        assert status == 200 and headers["content-type"] == "application/x-tar"
        assert hashlib.sha256(body).hexdigest() == crate.cksum


def test_head_sends_the_length_and_no_body(server: MirrorServer) -> None:
    status, headers, body = request(server, "/crates/serde/serde-1.0.152.crate", "HEAD")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == len(
        server.mirror.crate_path("serde", "1.0.152").read_bytes()
    )
    assert request(server, "/index/se/rd/nope", "HEAD")[0] == 404


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/index/se/rd/nope",
        "/index/SE/RD/serde",  # cargo asks for lowercase paths; no second spelling
        "/index/se/rd/Serde",
        "/index/xx/yy/serde",  # a real name under the wrong prefix
        "/index/se/serde",
        "/index/farm-mirror.json",
        "/farm-mirror.json",
        "/serde-1.0.152.crate",
        "/.farm-mirror.lock",
        "/crates/serde/serde-9.9.9.crate",
        "/crates/serde/fnv-1.0.7.crate",
        "/crates/serde/serde-1.0.152.crate.tmp",
        "/crates/serde/serde-1.0.152",
        "/crates/serde/serde-1.0.152.crate/x",
        "/crates/serde/serde-.crate",
    ],
)
def test_anything_else_is_404(server: MirrorServer, target: str) -> None:
    status, _, body = request(server, target)
    assert status == 404 and b"serde" not in body


@pytest.mark.parametrize(
    "target",
    [
        "/index/../farm-mirror.json",
        "/index/../../secret",
        "/index/%2e%2e/farm-mirror.json",
        "/index/%2E%2E/%2e%2e/secret",
        "/index/.%2e/.%2e/secret",
        "/crates/serde/..%2f..%2fsecret",
        "/crates/serde/%2e%2e%2f%2e%2e%2fsecret",
        "/crates/%2e%2e/%2e%2e.crate",
        "/index/se/rd/../../../../secret",
        "/index/3/f/../../../../secret",
        "//secret",
        "/index//se/rd/serde",
        "/index/se/rd/serde/",
        "/index\\..\\..\\secret",
        "/index/se/rd/serde%00",
        "/index/se/rd/serde%00.crate",
        "/index/se%2frd/serde",
        "/index/se/rd/%252e%252e",
        "/index/./se/rd/serde",
        "http://127.0.0.1/index/se/rd/serde",
        "/index/se/rd/serde#x",
    ],
)
def test_attacker_spellings_never_reach_a_file(server: MirrorServer, target: str) -> None:
    status, _, body = request(server, target)
    assert status in (400, 404), (target, status)
    assert SECRET not in body and b'"crates"' not in body


def test_symlinks_planted_in_the_mirror_are_not_followed(
    server: MirrorServer, tmp_path: Path
) -> None:
    index = server.mirror.index_dir
    (index / "ev" / "il").mkdir(parents=True)
    os.symlink(tmp_path / "secret", index / "ev" / "il" / "evil")  # a file link
    outside = tmp_path / "outside" / "li"
    outside.mkdir(parents=True)
    (outside / "link").write_bytes(SECRET)
    os.symlink(tmp_path / "outside", index / "li")  # a directory link
    os.symlink(tmp_path / "secret", server.mirror.path / "evil-1.0.0.crate")
    for target in ("/index/ev/il/evil", "/index/li/li/link", "/crates/evil/evil-1.0.0.crate"):
        status, _, body = request(server, target)
        assert status == 404 and SECRET not in body, target


def test_other_methods_are_refused(server: MirrorServer) -> None:
    assert request(server, "/index/se/rd/serde", "POST")[0] == 501
    assert request(server, "/index/se/rd/serde", "PUT")[0] == 501


def test_wildcard_listen_and_non_mirror_are_refused(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    for host in ("0.0.0.0", "::"):
        with pytest.raises(InputError, match="give the address clients will use"):
            MirrorServer(mirror, host, 0)
    with pytest.raises(MirrorError, match="not a farm mirror"):
        MirrorServer(Mirror(tmp_path / "nothing"), "127.0.0.1", 0)

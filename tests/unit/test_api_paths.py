"""`farm serve`'s API against hostile request targets, over raw sockets to a real server
process (tests/unit/apihost.py: the real Api, Service, Queue and Store, no workers).

Every spelling of every route that is not the canonical path must answer 400 or 404, a
non-public route without a token 401 (or 400/404), and one tenant's token never reaches
another tenant's build. The queue and store are read from the host side afterwards: no
spelling created, cancelled or changed a build."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.queue import Queue, State
from farm.records import Artifact, BuildRecord, Status
from farm.store import Store

from .apihost import Host, start

ALPHA, BETA = "alpha-token-0123456789", "beta-token-0123456789"
REFUSED = {400, 401, 404}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, Path, str]]:
    """A service with tenants alpha and beta; beta owns one queued build that has a
    stored record with an artifact and a log (so every route has something to show)."""
    tmp = tmp_path_factory.mktemp("paths")
    for tenant in ("alpha", "beta"):
        (tmp / "src" / tenant / "proj").mkdir(parents=True)
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps({"tenants": {"alpha": ALPHA, "beta": BETA}}))
    tokens.chmod(0o600)
    host = start(tmp / "home", tmp / "src", tokens)
    try:
        status, body = host.call("POST", "/v1/builds", BETA, spec(tmp, "beta"))
        assert status == 202, body
        build_id = json.loads(body)["id"]
        store = Store(tmp / "home")
        art_sha, art_size = store.put_bytes(b"beta's artifact\n")
        log_sha, _ = store.put_bytes(b"beta's log\n")
        store.save(
            BuildRecord(
                id=build_id,
                status=Status.SUCCEEDED,
                tenant="beta",
                image="farm/rust:bookworm",
                runtime="runsc",
                spec={},
                created_at=datetime.now(UTC),
                artifacts=[Artifact(path="out/x", sha256=art_sha, size=art_size)],
                log_sha256=log_sha,
            )
        )
        yield host, tmp, build_id
    finally:
        host.stop()


def spec(tmp: Path, tenant: str) -> bytes:
    source = tmp / "src" / tenant / "proj"
    data = {"source": str(source), "argv": ["true"], "outputs": ["out/x"], "source_date_epoch": 0}
    return json.dumps(data).encode()


def routes(build_id: str) -> list[tuple[str, str]]:
    build = f"/v1/builds/{build_id}"
    return [
        ("POST", "/v1/builds"),
        ("GET", "/v1/builds"),
        ("GET", build),
        ("GET", f"{build}/report"),
        ("POST", f"{build}/cancel"),
        ("GET", f"{build}/logs"),
        ("GET", f"{build}/artifacts"),
        ("GET", f"{build}/artifacts/out/x"),
    ]


def spellings(path: str) -> set[str]:
    """Other ways to write ``path``: each character percent-encoded (upper and lower hex,
    and double-encoded), each '/' as %2F, doubled, with dot segments or a backslash,
    case changes, parameters, fragments, NUL, non-ASCII and absolute forms."""
    out: set[str] = set()
    for i, c in enumerate(path):
        for enc in (f"%{ord(c):02X}", f"%{ord(c):02x}", f"%25{ord(c):02X}", f"%2525{ord(c):02x}"):
            out.add(path[:i] + enc + path[i + 1 :])
    for i in [i for i, c in enumerate(path) if c == "/"]:
        for alt in (
            "//",
            "/./",
            "/x/../",
            "\\",
            "/\\",
            "/%2E/",
            "/%2e%2E/../",
            "/.%2e/x/",
            ";/",
            "%C0%AF",
            "%E2%88%95",
        ):
            out.add(path[:i] + alt + path[i + 1 :])
        out.add(path[:i] + ";p=1" + path[i:])
    out |= {
        path.upper(),
        path.title(),
        path.replace("v1", "V1"),
        "/" + path,
        "//" + path,
        path + "/",
        path + "/.",
        path + "/..",
        path + "/x/..",
        path + ";",
        path + ";x=1",
        path + "%00",
        path + "%2F",
        path + "%2f",
        path + "#",
        path + "#/../x",
        "/x#/.." + path,
        "/%23/.." + path,
        "/%3F/.." + path,
        path + "\\",
        path.replace("/", "\\"),
        path + "\x00",
        path + "\t",
        path + "é",
        "/é/.." + path,
        "http://127.0.0.1" + path,
        "http://127.0.0.1:1" + path,
        "https://evil.invalid" + path,
        "//127.0.0.1" + path,
        "*",
        path[1:],
        "." + path,
    }
    out.discard(path)
    return out


def same_queue(tmp: Path, build_id: str) -> None:
    entries = Queue(tmp / "home" / "index.sqlite", default_limit=4).entries(limit=1000)
    assert [(e.id, e.tenant, e.state) for e in entries] == [(build_id, "beta", State.QUEUED)]


def test_no_spelling_of_a_token_route_answers_without_a_token(
    world: tuple[Host, Path, str],
) -> None:
    host, tmp, build_id = world
    leaks = []
    for method, path in routes(build_id):
        body = spec(tmp, "beta") if method == "POST" else b""
        for target in sorted(spellings(path) | {path, path + "?offset=0", path + "?"}):
            status, answer = host.call(method, target.encode(), None, body)
            if status not in REFUSED:
                leaks.append((method, target, status, answer[:80]))
    assert not leaks, f"{len(leaks)} answered without a token, e.g. {leaks[:5]}"
    same_queue(tmp, build_id)


def test_one_tenants_token_never_reaches_anothers_build(world: tuple[Host, Path, str]) -> None:
    host, tmp, build_id = world
    leaks = []
    for method, path in routes(build_id):
        body = spec(tmp, "beta") if method == "POST" else b""
        for target in sorted(spellings(path) | {path}):
            status, answer = host.call(method, target.encode(), ALPHA, body)
            listing = method == "GET" and status == 200 and answer.strip() == b"[]"
            if status not in REFUSED and not listing:
                leaks.append((method, target, status, answer[:80]))
    assert not leaks, f"{len(leaks)} reached beta's build with alpha's token: {leaks[:5]}"
    same_queue(tmp, build_id)


def test_the_owner_reaches_every_route_by_its_canonical_path(
    world: tuple[Host, Path, str],
) -> None:
    host, tmp, build_id = world
    build = f"/v1/builds/{build_id}"
    assert host.call("GET", "/v1/builds", BETA)[0] == 200
    assert host.call("GET", build, BETA)[0] == 200
    assert host.call("GET", f"{build}/report", BETA)[0] == 200
    assert host.call("GET", f"{build}/logs?offset=5", BETA) == (200, b"s log\n")
    assert host.call("GET", f"{build}/artifacts", BETA)[0] == 200
    assert host.call("GET", f"{build}/artifacts/out/x", BETA) == (200, b"beta's artifact\n")
    # Percent-encoding an unreserved character is the same path (RFC 3986 6.2.2.2).
    assert host.call("GET", f"{build}/artifacts/o%75t/x", BETA) == (200, b"beta's artifact\n")
    for public in ("/healthz", "/metrics"):
        assert host.call("GET", public)[0] == 200, public
    same_queue(tmp, build_id)
    # Last: the owner may cancel its own queued build.
    assert host.call("POST", f"{build}/cancel", BETA)[0] == 200
    assert Queue(tmp / "home" / "index.sqlite", 4).get(build_id).state is State.DONE


def test_a_source_outside_the_root_is_refused_before_anything_reads_it(
    world: tuple[Host, Path, str],
) -> None:
    """Confinement comes first: resolve() would otherwise look inside the tree (git for
    the commit time, Cargo.toml for the argv) before the service said it may not."""
    host, tmp, build_id = world
    outside = tmp / "outside"
    outside.mkdir(exist_ok=True)
    data = {"source": str(outside), "outputs": ["out/x"], "source_date_epoch": 0}
    status, answer = host.call("POST", "/v1/builds", BETA, json.dumps(data).encode())
    assert status == 400 and b"outside this service's source directory" in answer, answer
    other = {**data, "source": str(tmp / "src" / "alpha" / "proj")}
    status, answer = host.call("POST", "/v1/builds", BETA, json.dumps(other).encode())
    assert status == 400 and b"outside this service's source directory" in answer, answer
    entries = Queue(tmp / "home" / "index.sqlite", default_limit=4).entries(limit=1000)
    assert [e.id for e in entries] == [build_id]

"""``resolve_lock`` through ``farm serve``, over real HTTP, building in real gVisor: a
tenant asks for its lock to be resolved (a yes or no), and the service resolves it against
the mirror its operator configured (``farm serve --resolve-mirror``); a tenant never names
a directory, and a service without a mirror refuses the request before anything is queued
or created."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.mirror import serve as mirror_serve
from farm.mirror.store import Mirror
from farm.queue import Queue

from .conftest import farm
from .test_resolve_lock import _crate, _project
from .test_serve import serve  # noqa: F401 (the fixture)


@pytest.fixture
def served_mirror(tmp_path: Path) -> Iterator[mirror_serve.MirrorServer]:
    mirror = Mirror(tmp_path / "mirror").create()
    mirror.add_crate(_crate("leaf", "1.0.0"), "file")
    mirror.add_crate(_crate("leaf", "1.2.0"), "file")
    mirror.add_crate(_crate("mid", "0.3.1", '[dependencies]\nleaf = "1.0"\n'), "file")
    server = mirror_serve.MirrorServer(mirror, "127.0.0.1", 0).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _nothing_queued(home: Path) -> None:
    db = home / "index.sqlite"
    assert not db.exists() or Queue(db, 1).entries() == []
    work = home / "work"
    assert not work.exists() or not any(work.iterdir())


def test_a_tenant_asks_and_the_operators_mirror_resolves(
    serve,  # noqa: F811
    served_mirror: mirror_serve.MirrorServer,
    tmp_path: Path,
    home: Path,
) -> None:
    registries = tmp_path / "registries.json"
    registries.write_text(json.dumps([{"name": "mirror", "index": served_mirror.index_url}]))
    src = _project(tmp_path / "src" / "app", 'mid = "0.3"\n')  # no Cargo.lock
    served = serve(
        "--source-root",
        str(tmp_path / "src"),
        "--registries",
        str(registries),
        "--resolve-mirror",
        str(served_mirror.mirror.path),
    )
    env = {"FARM_SERVER": served.url}
    done = farm(home, "build", str(src), "--json", "--registry", "mirror", "--resolve-lock", **env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "succeeded"
    assert not (src / "Cargo.lock").exists()  # resolved into the snapshot, never the tree
    envelope = tmp_path / "prov.json"
    assert farm(home, "provenance", out["id"], "--out", str(envelope), **env).returncode == 0
    statement = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    mirror_dir = served_mirror.mirror.path.resolve()
    assert deps["Cargo.lock"]["annotations"]["mirror"] == str(mirror_dir)
    assert "leaf" in deps and "mid" in deps

    # Without the flag the same service uses the tree's lock: there is none, so it fails.
    # (Nor is it served the resolved build from the cache: farm.cache refuses those.)
    done = farm(home, "build", str(src), "--registry", "mirror", **env)
    assert done.returncode == 1 and ": failed" in done.stdout, done.stdout + done.stderr
    assert "cached" not in done.stderr and "Cargo.lock" in done.stdout, done.stdout

    # A tenant never names a directory: not through the CLI, not in the request.
    done = farm(home, "build", str(src), "--resolve-lock", str(tmp_path), **env)
    assert done.returncode == 2 and "drop MIRROR_DIR" in done.stderr
    for bad in (str(tmp_path), "yes", 1, {"dir": "/"}):
        status, raw = served.call(
            "POST",
            "/v1/builds",
            {"source": str(src), "argv": ["true"], "registry": "mirror", "resolve_lock": bad},
        )
        assert status == 400 and b"resolve_lock: Input should be a valid boolean" in raw, raw


def test_a_service_without_a_mirror_refuses_before_anything_is_queued(
    serve,  # noqa: F811
    tmp_path: Path,
    home: Path,
) -> None:
    src = _project(tmp_path / "src" / "app", 'mid = "0.3"\n')
    served = serve("--source-root", str(tmp_path / "src"))
    status, raw = served.call(
        "POST", "/v1/builds", {"source": str(src), "argv": ["true"], "resolve_lock": True}
    )
    assert status == 400, raw
    assert b"resolve_lock: this farm serve has no mirror to resolve locks against" in raw
    assert b"--resolve-mirror" in raw
    done = farm(home, "build", str(src), "--resolve-lock", FARM_SERVER=served.url)
    assert done.returncode == 2 and "no mirror to resolve locks against" in done.stderr
    _nothing_queued(home)


def test_serve_refuses_a_resolve_mirror_that_is_not_a_mirror(tmp_path: Path, home: Path) -> None:
    (tmp_path / "notmirror" / "index").mkdir(parents=True)
    for path in (tmp_path / "notmirror", tmp_path / "absent"):
        done = farm(home, "serve", "--port", "0", "--resolve-mirror", str(path), timeout=60)
        assert done.returncode == 2, done.stderr
        assert f"--resolve-mirror: {path} is not a farm mirror" in done.stderr
        assert "listening" not in done.stderr

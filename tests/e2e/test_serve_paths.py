"""A real `farm serve` (real dockerd and runsc) against hostile request targets: after
tenant beta's build ran in a real sandbox, every spelling of every route is tried with
no token and with tenant alpha's token. None answers 2xx, no sandbox is created and no
build changes (read from the queue, the store and dockerd's events on the host); beta
still reaches everything by the canonical path. tests/unit/test_api_paths.py runs the
same matrix against the API without docker."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from farm.queue import Queue, State
from farm.store import Store
from tests.unit.apihost import Host
from tests.unit.test_api_paths import REFUSED, routes, spellings

from .conftest import created
from .test_serve import Served, serve  # noqa: F401  (the fixture)


def test_no_spelling_reaches_a_build_without_its_tenants_token(
    serve,  # noqa: F811
    tmp_path: Path,
    client,
    home: Path,
) -> None:
    alpha, beta = "a" * 32, "b" * 32
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tenants": {"alpha": alpha, "beta": beta}}))
    tokens.chmod(0o600)
    root = tmp_path / "src"
    for tenant in ("alpha", "beta"):
        (root / tenant / "proj").mkdir(parents=True)
    (root / "beta" / "proj" / "secret.txt").write_text("beta-only-secret\n")
    served: Served = serve("--tokens", str(tokens), "--source-root", str(root))
    argv = ["sh", "-c", "cat secret.txt; cp secret.txt /out/x"]
    build = served.submit(root / "beta" / "proj", argv, token=beta)
    assert served.wait_done(build, token=beta)["result"] == "succeeded"

    match = re.match(r"http://([\d.]+):(\d+)", served.url)
    assert match
    host = Host(served.proc, match.group(1), int(match.group(2)))
    spec = {"source": str(root / "beta" / "proj"), "argv": argv, "outputs": ["out/x"]}
    since, leaks, tried = time.time(), [], 0
    for method, path in routes(build):
        body = json.dumps(spec).encode() if method == "POST" else b""
        for target in sorted(spellings(path) | {path}):
            for token in (None, alpha):
                status, answer = host.call(method, target.encode(), token, body)
                tried += 1
                listing = token and method == "GET" and status == 200 and answer.strip() == b"[]"
                if (status not in REFUSED and not listing) or b"beta-only-secret" in answer:
                    leaks.append((method, target, token and "alpha", status))
    assert not leaks, f"{len(leaks)} of {tried} requests got through: {leaks[:5]}"
    assert created(client, home, since) == []
    entries = Queue(home / "index.sqlite").entries(limit=1000)
    assert [(e.id, e.tenant, e.state, e.result) for e in entries] == [
        (build, "beta", State.DONE, "succeeded")
    ]
    assert Store(home).get(build).status.value == "succeeded"
    status, answer = host.call("GET", f"/v1/builds/{build}/artifacts/out/x", beta)
    assert (status, answer) == (200, b"beta-only-secret\n")

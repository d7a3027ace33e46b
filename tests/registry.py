"""A tiny crates.io-compatible sparse registry for tests, on farm's own HTTP server
(farm.httpserver) on 127.0.0.1: ``/index/config.json`` and ``/crates/NAME/NAME-VER.crate``.

Tests put real ``.crate`` bytes in ``crates`` and may add ``routes`` (a path answered with a
status and headers, e.g. a redirect) to play a misbehaving registry.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from farm.httpserver import BoundedHandler, BoundedServer


@dataclass
class Route:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class TestRegistry:
    __test__ = False

    crates: dict[tuple[str, str], bytes] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    #: The Authorization header of each request (empty string when absent).
    auth: list[str] = field(default_factory=list)
    port: int = 0
    dl: str | None = None
    #: URL prefix -> directory served as static files (a git repository over "dumb" HTTP).
    static: dict[str, Path] = field(default_factory=dict)

    @property
    def index(self) -> str:
        return f"sparse+http://127.0.0.1:{self.port}/index/"

    def answer(self, path: str) -> Route:
        self.requests.append(path)
        if path in self.routes:
            return self.routes[path]
        for prefix, root in self.static.items():
            if path.startswith(prefix) and ".." not in path:
                file = root / path.removeprefix(prefix).partition("?")[0]
                return Route(200, {}, file.read_bytes()) if file.is_file() else Route(404)
        if path == "/index/config.json":
            dl = (
                self.dl
                or f"http://127.0.0.1:{self.port}/crates/{{crate}}/{{crate}}-{{version}}.crate"
            )
            return Route(200, {"Content-Type": "application/json"}, json.dumps({"dl": dl}).encode())
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "crates":
            name = parts[2]
            version = parts[3].removeprefix(f"{name}-").removesuffix(".crate")
            if (name, version) in self.crates:
                return Route(200, {}, self.crates[(name, version)])
        return Route(404, {}, b"not found\n")


@contextmanager
def serve(registry: TestRegistry) -> Iterator[TestRegistry]:
    class Handler(BoundedHandler):
        def do_GET(self) -> None:
            registry.auth.append(self.headers.get("Authorization", ""))
            route = registry.answer(self.target)
            self.send_response(route.status)
            framing = (
                {}
                if "Transfer-Encoding" in route.headers
                else {"Content-Length": str(len(route.body))}
            )
            headers = {**framing, **route.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.write_body(route.body)

    server = BoundedServer(("127.0.0.1", registry.port), Handler)
    registry.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

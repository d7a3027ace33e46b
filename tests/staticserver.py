"""A loopback HTTP server of fixed files, on farm's bounded server: stands in for an
upstream (Debian's archive) in tests, so a test can serve real files or tampered ones."""

from __future__ import annotations

import threading
from typing import Any

from farm.httpserver import BoundedHandler, BoundedServer


class StaticServer(BoundedServer):
    """Serves ``files`` (URL path -> bytes; the dict may change while it runs)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StaticServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BoundedHandler):
    server: StaticServer

    def do_GET(self) -> None:
        self.server.requests.append(self.target)
        body = self.server.files.get(self.target)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

"""One plain-HTTP address in front of the real custom-resource API server and the fake.

Custom resources and their discovery go to the real server (tests/k8s/realapi.py); the
built-in kinds it does not serve (Jobs, Pods, NetworkPolicies, Leases, Services, Secrets,
Events and core ``/api`` discovery) go to tests/k8s/fakeapi.py. Watches are relayed as
they stream. Callers: the ``routed`` fixtures in tests/k8s/conftest.py.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.k8s.fakeapi import ROUTE, FakeAPI, rbac_verb
from tests.k8s.realapi import RealServer

#: Paths the real server answers; everything else is a built-in kind for the fake.
REAL_PREFIXES = (
    "/apis/farm.dev",
    "/apis/apiextensions.k8s.io",
    "/version",
    "/openapi",
    "/healthz",
    "/readyz",
    "/livez",
)
REAL_GROUPS = ("farm.dev", "apiextensions.k8s.io")
HOP_HEADERS = {
    "connection",
    "transfer-encoding",
    "content-length",
    "keep-alive",
    "host",
    "date",
    "server",
}


class Router(ThreadingHTTPServer):
    """One plain-HTTP address for both servers: the client (and kubectl) sees a single
    cluster whose custom resources are real and whose built-in kinds are the fake's.
    Requests to the real server are recorded in the fake's ``rbac_calls`` too, so the
    RBAC check of tests/k8s/conftest.py covers them."""

    daemon_threads = True

    def __init__(self, real: RealServer, fake_url: str, api: FakeAPI) -> None:
        self.real, self.fake_url, self.api = real, fake_url, api
        self.tls = real.context()
        self.real_requests: list[tuple[str, str]] = []
        #: Each write the real server answered: (method, path, sent JSON, answered JSON).
        self.real_writes: list[tuple[str, str, Any, Any]] = []
        super().__init__(("127.0.0.1", 0), _RouterHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def group_list(self) -> dict[str, Any]:
        """``/apis``: kube-apiserver's aggregator serves it, the standalone CRD server
        answers 404. Built from the real server's own group documents."""
        groups = []
        for name in REAL_GROUPS:
            code, group = self.real.request("GET", f"/apis/{name}")
            if code == 200:
                groups.append(group)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def upstream(self, path: str) -> http.client.HTTPConnection:
        if path.startswith(REAL_PREFIXES):
            host = urlsplit(self.real.url)
            return http.client.HTTPSConnection(host.hostname or "", host.port, context=self.tls)
        host = urlsplit(self.fake_url)
        return http.client.HTTPConnection(host.hostname or "", host.port)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _RouterHandler(BaseHTTPRequestHandler):
    server: Router
    protocol_version = "HTTP/1.1"  # for a chunked watch; every other answer has a length

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        url = urlsplit(self.path)
        if self.command == "GET" and url.path.rstrip("/") == "/apis":
            self._json(self.server.group_list())
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        upstream = self.server.upstream(url.path)
        if isinstance(upstream, http.client.HTTPSConnection):
            self._record(url.path, url.query)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            watch = _is_watch(url.path, url.query)
            answered = b"" if watch else response.read()
            # Noted before the client has its answer: with keep-alive it reads exactly
            # the body's length and goes on, so a test may look at once.
            if body and answered and isinstance(upstream, http.client.HTTPSConnection):
                sent = (self.command, url.path, json.loads(body), json.loads(answered))
                self.server.real_writes.append(sent)
            self._relay(response, watch, answered)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            upstream.close()

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, path: str, query: str) -> None:
        route = ROUTE.match(path)
        if route is None:
            return
        flat = {k: v[-1] for k, v in parse_qs(query).items()}
        resource = f"{route['plural']}/{route['sub']}" if route["sub"] else route["plural"]
        verb = rbac_verb(self.command, route["name"], flat)
        with self.server.api.cond:
            call = (route["group"] or "", resource, verb, route["name"], route["ns"])
            self.server.api.rbac_calls.append(call)
        self.server.real_requests.append((self.command, path))

    def _relay(self, response: http.client.HTTPResponse, stream: bool, data: bytes) -> None:
        """Relay the upstream's answer: ``data``, its body already read, or a watch."""
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        if not stream:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        # A watch: relay each chunk as it comes, chunked as the server sent it (a body
        # without length or chunks is read to its end: every event only at the close).
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        while chunk := response.read1(65536):
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


def pruned(sent: Any, stored: Any, where: str = "") -> list[str]:
    """Paths of values in ``sent`` that ``stored`` lacks: what the server dropped
    (nulls and empty lists and maps are left out: a merge patch's null deletes, and
    the server stores no empty ``finalizers``)."""
    if isinstance(sent, dict) and isinstance(stored, dict):
        return [
            lost
            for key, value in sent.items()
            if value not in (None, [], {})
            for lost in (
                pruned(value, stored[key], f"{where}.{key}")
                if key in stored
                else [f"{where}.{key}"]
            )
        ]
    if isinstance(sent, list) and isinstance(stored, list) and len(sent) == len(stored):
        return [
            lost
            for i, (a, b) in enumerate(zip(sent, stored, strict=True))
            for lost in pruned(a, b, f"{where}[{i}]")
        ]
    return []


def _is_watch(path: str, query: str) -> bool:
    flags = parse_qs(query).get("watch", [])
    return "/watch/" in path or any(v in ("true", "1", "True") for v in flags)

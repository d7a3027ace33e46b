"""The HTTP JSON API of ``farm serve`` (stdlib ``http.server``, one thread per request).

Callers: ``farm.cli`` (``farm serve`` builds the server with :func:`make_server`);
``farm.client`` speaks to it. Routes (docs/serve.md has the shapes)::

    POST /v1/builds                       submit a BuildSpec (JSON) -> 202 {id, state…}
    GET  /v1/builds                       the caller's builds, newest first
    GET  /v1/builds/ID                    state, times, result and the build's summary
    GET  /v1/builds/ID/report             the full BuildRecord
    POST /v1/builds/ID/cancel             cancel it (queued or running); answers when done
    GET  /v1/builds/ID/logs?offset=N      the log from byte N (live while running)
    GET  /v1/builds/ID/artifacts[/PATH]   the artifact list, or one artifact's bytes
    GET  /metrics                         Prometheus text format
    GET  /healthz                         200 while every worker is alive

Each request target is reduced once to its canonical path
(:func:`farm.httpserver.canonical_path`; anything ambiguous is 400) and routes match only
that. Each route says whether it is public: only /metrics and /healthz are. With tokens,
every other route needs ``Authorization: Bearer TOKEN``, checked before the body is read,
and a tenant sees only its own builds: another tenant's build is 404, exactly like one
that never existed. The server itself (timeouts, connection caps) is farm.httpserver's.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from farm.buildflow import take_options
from farm.errors import BusyError, InputError, NotFoundError, SpecError
from farm.httpserver import (
    BoundedHandler,
    BoundedServer,
    FileBody,
    HttpLimits,
    PathError,
    body_length,
    canonical_path,
    content_length,
)
from farm.queue import Entry, State
from farm.records import BuildRecord
from farm.runner import new_build_id
from farm.service import Service
from farm.store import Store
from farm.tokens import Tokens

log = logging.getLogger("farm.serve")

MAX_BODY = 1 << 20
JSON = "application/json"


@dataclass
class Response:
    status: int
    body: bytes | FileBody
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


#: Reads the request body once the route and the token allow it; raises ApiError.
BodyReader = Callable[[], bytes]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., Response]
    #: Answered without a token even when tokens are configured.
    public: bool = False
    #: Only these routes read a request body (after the token check).
    takes_body: bool = False


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.extra = status, extra


def check_bind(host: str, tokens: Tokens | None) -> None:
    """Off loopback, anyone who can reach the port could run builds: require tokens.

    Raises InputError."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and tokens is None:
        raise InputError(
            f"--bind {host}: refusing to listen beyond loopback without --tokens; "
            "give a tokens file (see docs/serve.md) or bind 127.0.0.1"
        )


def _json(status: int, data: Any) -> Response:
    return Response(status, json.dumps(data, indent=2).encode() + b"\n")


class Api:
    def __init__(
        self, service: Service, store: Store, work_dir: Path, tokens: Tokens | None
    ) -> None:
        self.service = service
        self.store = store
        self.work_dir = work_dir
        self.tokens = tokens
        build = r"/v1/builds/(?P<id>[A-Za-z0-9-]{1,64})"
        self.routes = [
            Route("GET", re.compile(r"/healthz"), self.healthz, public=True),
            Route("GET", re.compile(r"/metrics"), self.metrics, public=True),
            Route("POST", re.compile(r"/v1/builds"), self.submit, takes_body=True),
            Route("GET", re.compile(r"/v1/builds"), self.list_builds),
            Route("GET", re.compile(build), self.status),
            Route("GET", re.compile(build + "/report"), self.report),
            Route("POST", re.compile(build + "/cancel"), self.cancel),
            Route("GET", re.compile(build + "/logs"), self.logs),
            Route("GET", re.compile(build + "/artifacts"), self.artifacts),
            Route("GET", re.compile(build + "/artifacts/(?P<path>.+)"), self.artifact),
        ]

    def handle(self, method: str, target: str, headers: Any, read_body: BodyReader) -> Response:
        """Answer one request; ``read_body`` is called only for a route that takes a body,
        after the token check, so an anonymous client never makes the server read one."""
        try:
            try:
                path, raw_query = canonical_path(target)
            except PathError as exc:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"request path: {exc}") from None
            route, params = self._match(method, path)
            # The route, not the spelling of the path, decides whether a token is needed.
            tenant = None if route.public else self._tenant(headers)
            body = read_body() if route.takes_body else b""
            query = {k: v[-1] for k, v in parse_qs(raw_query).items()}
            return route.handler(tenant=tenant, body=body, query=query, **params)
        except ApiError as exc:
            resp = _json(exc.status, {"error": str(exc), **exc.extra})
            if exc.status == HTTPStatus.UNAUTHORIZED:
                resp.headers["WWW-Authenticate"] = "Bearer"
            if "retry_after" in exc.extra:
                resp.headers["Retry-After"] = str(exc.extra["retry_after"])
            return resp

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match and route.method == method:
                return route, match.groupdict()
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")

    def _tenant(self, headers: Any) -> str | None:
        """The caller's tenant; None when the service runs without tokens (no tenancy)."""
        if self.tokens is None:
            return None
        tenant = self.tokens.tenant(headers.get("Authorization"))
        if tenant is None:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or unknown bearer token")
        return tenant

    def _entry(self, build_id: str, tenant: str | None) -> Entry:
        try:
            entry = self.service.queue.get(build_id)
        except NotFoundError:
            entry = None
        if entry is None or (tenant is not None and entry.tenant != tenant):
            # The same answer as for a build that never existed: ids are not an oracle.
            raise ApiError(HTTPStatus.NOT_FOUND, f"build {build_id!r} does not exist")
        return entry

    def _record(self, entry: Entry) -> BuildRecord | None:
        try:
            record = self.store.get(entry.id)
        except NotFoundError:
            return None
        return record if record.id == entry.id else None

    def _view(self, entry: Entry) -> dict[str, Any]:
        record = self._record(entry) if entry.state is not State.QUEUED else None
        view = entry.model_dump(mode="json", exclude={"spec"})
        view["summary"] = record.summary() if record else None
        return view

    # routes

    def healthz(self, **_: Any) -> Response:
        ok = self.service.alive()
        depth = sum(self.service.queue.depth().values())
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        return _json(status, {"ok": ok, "queued": depth})

    def metrics(self, **_: Any) -> Response:
        self.service.refresh_gauges()
        return Response(200, generate_latest(self.service.metrics.registry), CONTENT_TYPE_LATEST)

    def submit(self, tenant: str | None, body: bytes, **_: Any) -> Response:
        try:
            data = json.loads(body or b"null")
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "body must be a BuildSpec JSON object")
        if tenant is not None:
            if data.get("tenant", tenant) != tenant:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    f"tenant: this token acts for tenant {tenant!r}; drop the field",
                    problems=[f"tenant: this token acts for tenant {tenant!r}"],
                )
            data["tenant"] = tenant
        try:
            options = take_options(data)  # check, no_cache: how to run it, not the spec
            spec = self.service.admit(data, options)  # the source is confined before it is read
            entry = self.service.submit(new_build_id(), spec, options)
        except SpecError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc), problems=exc.problems) from None
        except InputError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc), problems=[str(exc)]) from None
        except BusyError as exc:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), retry_after=5) from None
        log.info("queued build %s for tenant %s", entry.id, entry.tenant)
        return _json(HTTPStatus.ACCEPTED, self._view(entry))

    def list_builds(self, tenant: str | None, **_: Any) -> Response:
        entries = self.service.queue.entries(tenant=tenant, limit=200)
        return _json(200, [e.model_dump(mode="json", exclude={"spec"}) for e in entries])

    def status(self, tenant: str | None, id: str, **_: Any) -> Response:
        return _json(200, self._view(self._entry(id, tenant)))

    def cancel(self, tenant: str | None, id: str, **_: Any) -> Response:
        entry = self._entry(id, tenant)
        if entry.state is not State.DONE:
            self.service.cancel(entry)
        return _json(200, self._view(self.service.queue.get(id)))

    def report(self, tenant: str | None, id: str, **_: Any) -> Response:
        entry = self._entry(id, tenant)
        record = self._record(entry)
        if record is None:
            message = f"build {id!r} has no report yet"
            raise ApiError(HTTPStatus.NOT_FOUND, message, **self._view(entry))
        return Response(200, record.model_dump_json(indent=2).encode())

    def logs(self, tenant: str | None, id: str, query: dict[str, str], **_: Any) -> Response:
        entry = self._entry(id, tenant)
        try:
            offset = max(int(query.get("offset", "0")), 0)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "offset: expected a byte count") from None
        record = self._record(entry)
        if record and record.log_sha256:
            path = self.store.blob_path(record.log_sha256)
        else:  # still running: the live, size-capped log file of the build
            path = self.work_dir / entry.id / "build.log"
        headers = {"X-Farm-State": entry.state.value}
        body = _file_from(path, offset) or b""  # not started yet: no log
        return Response(200, body, "text/plain; charset=utf-8", headers)

    def artifacts(self, tenant: str | None, id: str, **_: Any) -> Response:
        record = self._record(self._entry(id, tenant))
        return _json(200, [a.model_dump() for a in record.artifacts] if record else [])

    def artifact(self, tenant: str | None, id: str, path: str, **_: Any) -> Response:
        record = self._record(self._entry(id, tenant))
        # Matched against the record's own list: a request path never touches the disk.
        for a in record.artifacts if record else []:
            if a.path == path:
                body = _file_from(self.store.blob_path(a.sha256), 0)
                if body is None:  # removed by `farm gc` since the record was read
                    raise ApiError(HTTPStatus.NOT_FOUND, f"artifact {path!r} is gone")
                return Response(200, body, "application/octet-stream")
        raise ApiError(HTTPStatus.NOT_FOUND, f"build {id!r} has no artifact {path!r}")


def _file_from(path: Path, offset: int) -> FileBody | None:
    """The file's bytes from ``offset`` to its size now, to be streamed (a live log
    may grow meanwhile; what was there when asked is sent); None if it is missing."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return None
    size = os.fstat(fh.fileno()).st_size
    fh.seek(min(offset, size))
    return FileBody(fh, max(size - offset, 0))


class _Handler(BoundedHandler):
    server_version = "farm"
    api: Api

    def _serve(self, method: str) -> None:
        resp = self.api.handle(method, self.target, self.headers, self._read_body)
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(body_length(resp.body)))
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.write_body(resp.body)
        finally:  # the client may have gone before the body was written
            if isinstance(resp.body, FileBody):
                resp.body.file.close()

    def _read_body(self) -> bytes:
        length = content_length(self.headers)
        if not 0 <= length <= MAX_BODY:
            message = "one Content-Length of 0 to 1 MiB, no Transfer-Encoding"
            raise ApiError(HTTPStatus.BAD_REQUEST, message)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


def make_server(api: Api, host: str, port: int, limits: HttpLimits | None = None) -> BoundedServer:
    """Raises OSError when it cannot listen."""
    handler = type("Handler", (_Handler,), {"api": api})
    return BoundedServer((host, port), handler, limits)

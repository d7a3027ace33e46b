"""A small Kubernetes API server over real HTTP, for the controller's tests.

It implements only what farm's controller calls, with the semantics that matter for a
controller's correctness: a global resourceVersion, 409 AlreadyExists on a create of an
existing name, 409 Conflict on an update or guarded patch with a stale resourceVersion,
JSON merge patch, finalizers and deletionTimestamp, ownerReference cascade on delete,
the status subresource, label- and field-selected lists and watches (a watch reports an
object that starts or stops matching as ADDED or DELETED, as the watch cache does),
lists in pages (``limit`` and ``continue``, each page from the first page's snapshot,
410 once the snapshot's resourceVersion is compacted), watch streams from a
resourceVersion, 410 Gone for a watch from a compacted (expired) resourceVersion, and a
bookmark at a watch's end when other changes moved the resourceVersion on. Tests drive the
"kubelet" side through :meth:`FakeAPI.mutate`, which changes objects and emits events
exactly as the API would.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]
ROUTE = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|log))?$"
)
KINDS = {
    "builds": "Build",
    "jobs": "Job",
    "pods": "Pod",
    "services": "Service",
    "secrets": "Secret",
    "serviceaccounts": "ServiceAccount",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "networkpolicies": "NetworkPolicy",
    "leases": "Lease",
    "events": "Event",
}

#: The core group's discovery documents, so a client that discovers first (kubectl)
#: finds the built-in kinds this fake serves (tests/k8s/realapi.py routes ``/api`` here).
_CORE_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
CORE_DISCOVERY: dict[str, Any] = {
    "/api": {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    },
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": plural,
                "singularName": "",
                "namespaced": True,
                "kind": kind,
                "verbs": _CORE_VERBS,
            }
            for plural, kind in (
                ("pods", "Pod"),
                ("services", "Service"),
                ("secrets", "Secret"),
                ("serviceaccounts", "ServiceAccount"),
                ("persistentvolumeclaims", "PersistentVolumeClaim"),
                ("events", "Event"),
            )
        ],
    },
}

#: The API server's answer to a ``continue`` token whose resourceVersion was compacted.
CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter."
)


def _encode_continue(rv: int, start: int) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[int, int]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(raw["rv"]), int(raw["start"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiError(400, "BadRequest", f"invalid continue token: {exc}") from exc


#: Kinds whose create ignores ``status`` (their status is a subresource); tests seed a
#: pod's status through create, standing in for the kubelet.
STATUS_SUBRESOURCE = {"builds"}
IMMUTABLE_SPEC = (
    'spec: Invalid value: "object": spec is immutable: delete the Build and create a new one'
)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def rbac_verb(method: str, name: str | None, query: dict[str, str]) -> str:
    """The verb the API server's authorizer sees for one request."""
    if method == "GET" and name is None:
        return "watch" if query.get("watch") in ("true", "1", "True") else "list"
    if method == "DELETE" and name is None:
        return "deletecollection"
    return {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "delete")


def matches(obj: Obj, selector: str | None) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        name, _, value = term.partition("=")
        if labels.get(name) != value:
            return False
    return True


#: The field selectors the API server supports, per resource (the rest of the kinds
#: support only metadata.name and metadata.namespace); any other field is a 400.
FIELDS: dict[str, tuple[str, ...]] = {
    "pods": ("spec.nodeName", "status.phase", "spec.serviceAccountName"),
}
_FIELD_TERM = re.compile(r"^(?P<field>[A-Za-z.]+)(?P<op>==|!=|=)(?P<value>.*)$")


def field_value(obj: Obj, field: str) -> str:
    value: Any = obj
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def field_terms(plural: str, selector: str | None) -> list[tuple[str, bool, str]]:
    """Parse ``a=b,c!=d`` into (field, equal, value); 400 for a field the kind lacks,
    with the API server's message."""
    terms = []
    for term in filter(None, (selector or "").split(",")):
        parsed = _FIELD_TERM.match(term)
        if parsed is None:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        field = parsed["field"]
        if field not in ("metadata.name", "metadata.namespace", *FIELDS.get(plural, ())):
            message = f"field label not supported: {field}"
            raise ApiError(400, "BadRequest", f'"{field}" is not a known field selector: {message}')
        terms.append((field, parsed["op"] != "!=", parsed["value"]))
    return terms


def fields_match(obj: Obj, terms: list[tuple[str, bool, str]]) -> bool:
    return all((field_value(obj, f) == v) == equal for f, equal, v in terms)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
        }


class FakeAPI:
    """The object store and its change log; thread-safe."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.log: list[tuple[int, str, str, Obj]] = []  # (rv, type, plural, object)
        #: The object as it was before each logged change (None for a create), by rv:
        #: a selecting watch needs it to tell "stopped matching" (DELETED) from the rest.
        self.before: dict[int, Obj | None] = {}
        #: Paged lists in progress: the first page's resourceVersion -> every item it
        #: selected then, so later pages come from the same snapshot.
        self.snapshots: dict[int, list[Obj]] = {}
        self.rv = 100
        self.compacted = 0
        self.pod_logs: dict[tuple[str, str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        #: Each request with its query: (method, path, query parameters).
        self.queries: list[tuple[str, str, dict[str, str]]] = []
        #: (plural, namespace, name) of every object ever created; never compacted.
        self.created: list[tuple[str, str, str]] = []
        #: Each request as RBAC sees it: (API group, resource, verb, object name or None,
        #: namespace or None for a cluster-wide request).
        self.rbac_calls: list[tuple[str, str, str, str | None, str | None]] = []
        self.fail_next: dict[tuple[str, str], int] = {}  # (method, plural) -> status
        self.cond = threading.Condition()

    # --- store --------------------------------------------------------------------------
    def _emit(self, kind: str, plural: str, obj: Obj, before: Obj | None = None) -> None:
        self.log.append((self.rv, kind, plural, copy.deepcopy(obj)))
        self.before[self.rv] = copy.deepcopy(before)
        self.cond.notify_all()

    def _bump(self, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def get(self, plural: str, ns: str, name: str) -> Obj:
        with self.cond:
            return copy.deepcopy(self._stored((plural, ns, name)))

    def list(self, plural: str, ns: str | None = None, selector: str | None = None) -> list[Obj]:
        with self.cond:
            return [
                copy.deepcopy(o)
                for (p, n, _), o in sorted(self.objects.items())
                if p == plural and (ns is None or n == ns) and matches(o, selector)
            ]

    def create(self, plural: str, ns: str, body: Obj) -> Obj:
        with self.cond:
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (plural, ns, meta["name"])
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
            meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_stamp())
            meta.setdefault("generation", 1)
            obj.setdefault("kind", KINDS[plural])
            if plural in STATUS_SUBRESOURCE:
                obj.pop("status", None)  # as the real server: status is written via /status
            self._bump(obj)
            self.objects[key] = obj
            self.created.append(key)
            self._emit("ADDED", plural, obj)
            return copy.deepcopy(obj)

    def _stored(self, key: tuple[str, str, str]) -> Obj:
        """The stored object (not a copy) at ``key``; 404 as the API server says it."""
        found = self.objects.get(key)
        if found is None:
            plural, _, name = key
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return found

    def _check_rv(self, stored: Obj, body: Obj) -> None:
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want and want != stored["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; "
                "please apply your changes to the latest version and try again",
            )

    def _store(self, plural: str, key: tuple[str, str, str], obj: Obj) -> Obj:
        if plural == "builds" and obj.get("spec") != self.objects[key].get("spec"):
            # The CRD's CEL rule (farm/k8s/crd.py IMMUTABLE), as the real server applies it.
            raise ApiError(422, "Invalid", f"{IMMUTABLE_SPEC} (Build {key[2]})")
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(plural, key)
        before = self.objects[key]
        self._bump(obj)
        self.objects[key] = obj
        self._emit("MODIFIED", plural, obj, before)
        return copy.deepcopy(obj)

    def replace(self, plural: str, ns: str, name: str, body: Obj, sub: str | None) -> Obj:
        with self.cond:
            key = (plural, ns, name)
            stored = self._stored(key)
            self._check_rv(stored, body)
            obj = copy.deepcopy(stored)
            if sub == "status":
                obj["status"] = copy.deepcopy(body.get("status"))
            else:
                keep = {
                    k: stored["metadata"][k]
                    for k in ("uid", "creationTimestamp")
                    if k in stored["metadata"]
                }
                obj = (
                    {**copy.deepcopy(body), "status": stored.get("status")}
                    if plural == "builds"
                    else copy.deepcopy(body)
                )
                obj["metadata"].update(keep)
            return self._store(plural, key, obj)

    def patch(self, plural: str, ns: str, name: str, body: Obj, sub: str | None) -> Obj:
        with self.cond:
            key = (plural, ns, name)
            stored = self._stored(key)
            self._check_rv(stored, body)
            body = copy.deepcopy(body)
            (body.get("metadata") or {}).pop("resourceVersion", None)
            if sub == "status":
                body = {"status": body.get("status")}
            elif "status" in body and plural == "builds":
                body.pop("status")
            return self._store(plural, key, merge_patch(stored, body))

    def delete(self, plural: str, ns: str, name: str) -> Obj:
        with self.cond:
            key = (plural, ns, name)
            stored = self._stored(key)
            if stored["metadata"].get("finalizers"):
                if not stored["metadata"].get("deletionTimestamp"):
                    obj = copy.deepcopy(stored)
                    obj["metadata"]["deletionTimestamp"] = _stamp()
                    return self._store(plural, key, obj)
                return copy.deepcopy(stored)
            return self._remove(plural, key)

    def _remove(self, plural: str, key: tuple[str, str, str]) -> Obj:
        obj = self.objects.pop(key)
        before = copy.deepcopy(obj)
        self._bump(obj)
        self._emit("DELETED", plural, obj, before)
        uid = obj["metadata"]["uid"]
        # The garbage collector: dependents go with their owner.
        for dep_key, dep in list(self.objects.items()):
            owners = dep["metadata"].get("ownerReferences") or []
            if dep_key in self.objects and any(o.get("uid") == uid for o in owners):
                self._remove(dep_key[0], dep_key)
        return copy.deepcopy(obj)

    # --- the "kubelet" and test hooks ----------------------------------------------------
    def mutate(self, plural: str, ns: str, name: str, change: Any) -> Obj:
        """Apply ``change(obj)`` server-side, as a kubelet/Job controller would."""
        with self.cond:
            key = (plural, ns, name)
            obj = copy.deepcopy(self.objects[key])
            change(obj)
            return self._store(plural, key, obj)

    def compact(self) -> None:
        """Forget history past every watcher's position: each open watch (and any
        later one from a resourceVersion seen so far) now gets 410 Gone."""
        with self.cond:
            self.compacted = self.rv + 1
            self.log.clear()
            self.before.clear()
            self.snapshots.clear()
            self.cond.notify_all()

    def events_since(
        self,
        plural: str,
        rv: int,
        ns: str | None,
        selector: str | None,
        fields: list[tuple[str, bool, str]] | None = None,
    ) -> list[tuple[int, str, Obj]]:
        """The changes after ``rv`` as a watch with these selectors sees them (the watch
        cache's rule): a change of an object that matches now and matched before is
        MODIFIED, one that starts matching ADDED, one that stops matching (or is
        deleted) DELETED, carrying its last matching state at the change's version."""

        def selected(obj: Obj | None) -> bool:
            return (
                obj is not None
                and (ns is None or obj["metadata"]["namespace"] == ns)
                and matches(obj, selector)
                and fields_match(obj, fields or [])
            )

        seen = []
        for r, kind, p, obj in self.log:
            if r <= rv or p != plural:
                continue
            before = self.before.get(r)
            now, was = kind != "DELETED" and selected(obj), selected(before)
            if now:
                seen.append((r, "MODIFIED" if was and kind == "MODIFIED" else "ADDED", obj))
            elif was and before is not None:
                gone = copy.deepcopy(before)
                gone["metadata"]["resourceVersion"] = str(r)
                seen.append((r, "DELETED", gone))
        return seen

    def select(
        self,
        plural: str,
        ns: str | None,
        query: dict[str, str],
    ) -> Obj:
        """One list request: every selected item, or one page of them (``limit``,
        ``continue``) from the snapshot the first page took."""
        fields = field_terms(plural, query.get("fieldSelector"))
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with self.cond:
            if token:
                snap_rv, start = _decode_continue(token)
                if snap_rv < self.compacted or snap_rv not in self.snapshots:
                    raise ApiError(410, "Expired", CONTINUE_EXPIRED)
                items = self.snapshots[snap_rv]
            else:
                snap_rv, start = max(self.rv, self.compacted), 0
                items = [
                    o
                    for o in self.list(plural, ns, query.get("labelSelector"))
                    if fields_match(o, fields)
                ]
            page = items[start : start + limit] if limit else items[start:]
            meta: Obj = {"resourceVersion": str(snap_rv)}
            rest = len(items) - start - len(page)
            if rest > 0:
                self.snapshots[snap_rv] = items
                meta["continue"] = _encode_continue(snap_rv, start + len(page))
                meta["remainingItemCount"] = rest
            return {"metadata": meta, "items": page}

    # --- HTTP -----------------------------------------------------------------------------
    def serve(self) -> FakeServer:
        return FakeServer(self)


class _Handler(BaseHTTPRequestHandler):
    server: FakeServer
    protocol_version = "HTTP/1.1"  # for a chunked watch; every other answer has a length

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Obj:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if method == "GET" and url.path.rstrip("/") in CORE_DISCOVERY:
            self._send(200, CORE_DISCOVERY[url.path.rstrip("/")])
            return
        route = ROUTE.match(url.path)
        if route is None or route["plural"] not in KINDS:
            self._send(404, ApiError(404, "NotFound", url.path).body())
            return
        plural, ns, name, sub = route["plural"], route["ns"], route["name"], route["sub"]
        resource = f"{plural}/{sub}" if sub else plural
        verb = rbac_verb(method, name, query)
        with api.cond:
            api.requests.append((method, url.path))
            api.queries.append((method, url.path, query))
            api.rbac_calls.append((route["group"] or "", resource, verb, name, ns))
            injected = api.fail_next.pop((method, plural), None)
        try:
            if injected:
                raise ApiError(injected, "Injected", f"injected {injected} for {method} {plural}")
            if method == "GET" and name is None and query.get("watch") in ("true", "1", "True"):
                self._watch(plural, ns, query)
                return
            result = self._call(method, plural, ns, name, sub, query)
            if isinstance(result, _Raw):
                self._send(200, bytes(result), "text/plain")
            else:
                self._send(201 if method == "POST" else 200, result)
        except ApiError as exc:
            self._send(exc.code, exc.body())

    def _call(
        self,
        method: str,
        plural: str,
        ns: str | None,
        name: str | None,
        sub: str | None,
        query: dict,
    ) -> Any:
        api = self.server.api
        if method == "GET" and name is None:
            return {
                "kind": f"{KINDS[plural]}List",
                "apiVersion": "v1",
                **api.select(plural, ns, query),
            }
        assert ns is not None
        if method == "POST":
            return api.create(plural, ns, self._body())
        assert name is not None
        if method == "GET" and sub == "log":
            data = api.pod_logs.get((ns, name, query.get("container", "")), b"")
            limit = int(query.get("limitBytes") or len(data))
            return _Raw(data[:limit])
        if method == "GET":
            return api.get(plural, ns, name)
        if method == "PUT":
            return api.replace(plural, ns, name, self._body(), sub)
        if method == "PATCH":
            return api.patch(plural, ns, name, self._body(), sub)
        if method == "DELETE":
            uid = (self._body().get("preconditions") or {}).get("uid")
            if uid and api.get(plural, ns, name)["metadata"]["uid"] != uid:
                raise ApiError(409, "Conflict", f"precondition failed: uid {uid}")
            return api.delete(plural, ns, name)
        raise ApiError(405, "MethodNotAllowed", method)

    def _watch(self, plural: str, ns: str | None, query: dict) -> None:
        api = self.server.api
        rv = int(query.get("resourceVersion") or api.rv)
        timeout = float(query.get("timeoutSeconds") or 5)
        fields = field_terms(plural, query.get("fieldSelector"))  # a 400 before the stream
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        # Chunked, as the API server streams a watch: a client reading a body without
        # length or chunks reads to its end, and would see each event only when the
        # watch times out.
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        deadline = threading.Event()
        timer = threading.Timer(timeout, lambda: (deadline.set(), _notify(api)))
        timer.start()
        try:
            while not deadline.is_set() and not self.server.closing.is_set():
                with api.cond:
                    if rv < api.compacted:
                        gone = ApiError(
                            410, "Expired", f"too old resource version: {rv} ({api.compacted})"
                        )
                        self._line({"type": "ERROR", "object": gone.body()})
                        return
                    events = api.events_since(plural, rv, ns, query.get("labelSelector"), fields)
                    if not events:
                        api.cond.wait(0.5)
                        continue
                for r, kind, obj in events:
                    self._line({"type": kind, "object": obj})
                    rv = r
            if query.get("allowWatchBookmarks") in ("true", "1", "True"):
                self._bookmark(plural, ns, query, rv, fields)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            timer.cancel()
            with contextlib.suppress(OSError):
                self.wfile.write(b"0\r\n\r\n")  # the last chunk: the watch is over

    def _bookmark(self, plural: str, ns: str | None, query: dict, rv: int, fields: list) -> None:
        """As the real watch cache does before a watch times out: the newest
        resourceVersion, if changes this watch did not match moved past its own (and
        nothing it matches is still undelivered)."""
        api = self.server.api
        with api.cond:
            pending = api.events_since(plural, rv, ns, query.get("labelSelector"), fields)
            if pending or rv < api.compacted or api.rv <= rv or self.server.closing.is_set():
                return
            latest = api.rv
        mark = {"kind": KINDS[plural], "metadata": {"resourceVersion": str(latest)}}
        self._line({"type": "BOOKMARK", "object": mark})

    def _line(self, event: Obj) -> None:
        self._chunk(json.dumps(event).encode() + b"\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


def _notify(api: FakeAPI) -> None:
    with api.cond:
        api.cond.notify_all()


class _Raw(bytes):
    pass


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: FakeAPI) -> None:
        self.api = api
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.closing.set()
        _notify(self.api)
        self.shutdown()
        self.server_close()

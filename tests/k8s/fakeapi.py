"""A small Kubernetes API server over real HTTP, for the controller's tests.

It implements only what farm's controller calls, with the semantics that matter for a
controller's correctness: a global resourceVersion, 409 AlreadyExists on a create of an
existing name, 409 Conflict on an update or guarded patch with a stale resourceVersion,
JSON merge patch, finalizers and deletionTimestamp, ownerReference cascade on delete,
the status subresource, label-selected lists, watch streams from a resourceVersion, and
410 Gone for a watch from a compacted (expired) resourceVersion, and a bookmark at a
watch's end when other changes moved the resourceVersion on. Tests drive the
"kubelet" side through :meth:`FakeAPI.mutate`, which changes objects and emits events
exactly as the API would.
"""

from __future__ import annotations

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
        self.rv = 100
        self.compacted = 0
        self.pod_logs: dict[tuple[str, str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        #: (plural, namespace, name) of every object ever created; never compacted.
        self.created: list[tuple[str, str, str]] = []
        #: Each request as RBAC sees it: (API group, resource, verb, object name or None,
        #: namespace or None for a cluster-wide request).
        self.rbac_calls: list[tuple[str, str, str, str | None, str | None]] = []
        self.fail_next: dict[tuple[str, str], int] = {}  # (method, plural) -> status
        self.cond = threading.Condition()

    # --- store --------------------------------------------------------------------------
    def _emit(self, kind: str, plural: str, obj: Obj) -> None:
        self.log.append((self.rv, kind, plural, copy.deepcopy(obj)))
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
        self._bump(obj)
        self.objects[key] = obj
        self._emit("MODIFIED", plural, obj)
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
        self._bump(obj)
        self._emit("DELETED", plural, obj)
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
            self.cond.notify_all()

    def events_since(
        self, plural: str, rv: int, ns: str | None, selector: str | None
    ) -> list[tuple[int, str, Obj]]:
        return [
            (r, t, o)
            for r, t, p, o in self.log
            if r > rv
            and p == plural
            and (ns is None or o["metadata"]["namespace"] == ns)
            and matches(o, selector)
        ]

    # --- HTTP -----------------------------------------------------------------------------
    def serve(self) -> FakeServer:
        return FakeServer(self)


class _Handler(BaseHTTPRequestHandler):
    server: FakeServer

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
            items = api.list(plural, ns, query.get("labelSelector"))
            if query.get("fieldSelector"):  # only spec.nodeName=X, as the node monitor asks
                field, _, value = query["fieldSelector"].partition("=")
                assert field == "spec.nodeName", field
                items = [o for o in items if o.get("spec", {}).get("nodeName") == value]
            return {
                "kind": f"{KINDS[plural]}List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(max(api.rv, api.compacted))},
                "items": items,
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
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
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
                    events = api.events_since(plural, rv, ns, query.get("labelSelector"))
                    if not events:
                        api.cond.wait(0.5)
                        continue
                for r, kind, obj in events:
                    self._line({"type": kind, "object": obj})
                    rv = r
            if query.get("allowWatchBookmarks") in ("true", "1", "True"):
                self._bookmark(plural, ns, query, rv)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            timer.cancel()

    def _bookmark(self, plural: str, ns: str | None, query: dict, rv: int) -> None:
        """As the real watch cache does before a watch times out: the newest
        resourceVersion, if changes this watch did not match moved past its own (and
        nothing it matches is still undelivered)."""
        api = self.server.api
        with api.cond:
            pending = api.events_since(plural, rv, ns, query.get("labelSelector"))
            if pending or rv < api.compacted or api.rv <= rv or self.server.closing.is_set():
                return
            latest = api.rv
        mark = {"kind": KINDS[plural], "metadata": {"resourceVersion": str(latest)}}
        self._line({"type": "BOOKMARK", "object": mark})

    def _line(self, event: Obj) -> None:
        self.wfile.write(json.dumps(event).encode() + b"\n")
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

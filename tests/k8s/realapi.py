"""The real Kubernetes custom-resource API server for the k8s tests, behind one address.

Runs etcd and apiextensions-apiserver (both built from Debian's packages by
``make apiserver``, farm/devapiserver.py) as child processes on 127.0.0.1, with the
flags issue 13 found necessary, and a :class:`Router` in front: custom resources and
their discovery go to the real server, the built-in kinds this server does not serve
(Jobs, Pods, NetworkPolicies, Leases, Services, Secrets, Events and core ``/api``
discovery) to tests/k8s/fakeapi.py. Callers: the fixtures in tests/k8s/conftest.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import http.client
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.k8s.fakeapi import ROUTE, FakeAPI, rbac_verb

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
#: Admission plugins that wait for core informers this server has no API for, and
#: answer 403 "not yet ready" until then (forever).
DISABLED_ADMISSION = (
    "NamespaceLifecycle",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "MutatingAdmissionPolicy",
)
HOP_HEADERS = {
    "connection",
    "transfer-encoding",
    "content-length",
    "keep-alive",
    "host",
    "date",
    "server",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates ------------------------------------------------------------------------
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usage = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
        builder = builder.add_extension(usage, critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class Credentials:
    ca: Path
    cert: Path
    key: Path


def client_credentials(directory: Path) -> Credentials:
    """A CA for ``--client-ca-file`` and a client certificate it signed for a member of
    ``system:masters``, the group every authorizer admits."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, user_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "farm-test-ca")])
    user = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "farm-test-admin"),
        ]
    )
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    cert = _cert(user, user_key, ca_name, ca_key, ca=False)
    found = Credentials(directory / "ca.crt", directory / "admin.crt", directory / "admin.key")
    found.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    found.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    found.key.write_bytes(_pem_key(user_key))
    found.key.chmod(0o600)
    return found


def kubeconfig(path: Path, server: str, creds: Credentials, ca: Path | None) -> Path:
    """A kubeconfig whose user is the client certificate (JSON is valid YAML)."""
    cluster: dict[str, Any] = {"server": server}
    if ca is not None:
        cluster["certificate-authority"] = str(ca)
    user = {"client-certificate": str(creds.cert), "client-key": str(creds.key)}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "farm", "cluster": cluster}],
        "users": [{"name": "admin", "user": user}],
        "contexts": [{"name": "farm", "context": {"cluster": "farm", "user": "admin"}}],
        "current-context": "farm",
    }
    path.write_text(json.dumps(config))
    return path


# --- processes -----------------------------------------------------------------------------
@dataclass
class Etcd:
    url: str
    process: subprocess.Popen[bytes]

    def compact(self) -> int:
        """Compact etcd's history at its current revision (its v3 HTTP gateway); returns
        the revision. A watch from any earlier revision then fails with 410 Gone."""
        status = _post_json(f"{self.url}/v3/kv/range", {"key": "AA=="})
        revision = int(status["header"]["revision"])
        _post_json(f"{self.url}/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def start_etcd(binary: Path, data: Path, log: Path) -> Etcd:
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    argv = [
        str(binary),
        "--name=farm-test",
        f"--data-dir={data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=farm-test={peer}",
        "--listen-metrics-urls=",
    ]
    process = _spawn(argv, log)
    _wait_ready(process, log, lambda: _http_ok(f"{client}/health"))
    return Etcd(client, process)


@dataclass
class RealServer:
    url: str
    process: subprocess.Popen[bytes]
    creds: Credentials
    serving_ca: Path

    def context(self) -> ssl.SSLContext:
        """TLS as a privileged client: our certificate, the server's own serving CA."""
        context = ssl.create_default_context(cafile=str(self.serving_ca))
        context.load_cert_chain(self.creds.cert, self.creds.key)
        return context

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One request straight to the real server: (status, decoded JSON body)."""
        host = urlsplit(self.url)
        conn = http.client.HTTPSConnection(
            host.hostname or "", host.port, context=self.context(), timeout=30
        )
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        return response.status, _decoded(raw, response.getheader("Content-Type") or "")


def start_apiserver(
    binary: Path, etcd: Etcd, work: Path, creds: Credentials, *flags: str
) -> RealServer:
    """apiextensions-apiserver with issue 13's flags; ``flags`` adds to them."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    certs = work / "serving"
    own = kubeconfig(work / "self.kubeconfig", url, creds, certs / "apiserver.crt")
    argv = [
        str(binary),
        f"--etcd-servers={etcd.url}",
        f"--secure-port={port}",
        "--bind-address=127.0.0.1",
        f"--cert-dir={certs}",
        f"--client-ca-file={creds.ca}",
        f"--kubeconfig={own}",
        f"--authentication-kubeconfig={own}",
        f"--authorization-kubeconfig={own}",
        "--authentication-skip-lookup",
        "--enable-priority-and-fairness=false",
        f"--disable-admission-plugins={','.join(DISABLED_ADMISSION)}",
        *flags,
    ]
    log = work / "apiserver.log"
    process = _spawn(argv, log)
    server = RealServer(url, process, creds, certs / "apiserver.crt")
    _wait_ready(process, log, lambda: _ready(server))
    return server


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    """SIGTERM the child if pytest dies without stopping it (killed, or a crash):
    no etcd or server is left running on the machine."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _http_ok(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)
    return False


def _ready(server: RealServer) -> bool:
    if not server.serving_ca.exists():
        return False
    with contextlib.suppress(OSError, ssl.SSLError):
        # informer-sync waits for core informers (Services, Namespaces) this server
        # has no API for: they never sync, and the CRD server works without them.
        request = urllib.request.Request(f"{server.url}/readyz?exclude=informer-sync")
        with urllib.request.urlopen(request, timeout=2, context=server.context()) as response:
            return bool(response.status == 200)
    return False


def _wait_ready(process: subprocess.Popen[bytes], log: Path, probe: Any) -> None:
    """Poll until ready; a process that exits fails at once with its log's tail. The
    limit only bounds a hang (a loaded CI machine is slow, not wrong)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited {process.returncode}:\n{_tail(log)}")
        if probe():
            return
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"{log.name}: not ready:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM our own child by its pid, SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


# --- the router ----------------------------------------------------------------------------
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
            self._relay(response, _is_watch(url.path, url.query))
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
            self.server.api.rbac_calls.append((route["group"] or "", resource, verb, route["name"]))
        self.server.real_requests.append((self.command, path))

    def _relay(self, response: http.client.HTTPResponse, stream: bool) -> None:
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        if not stream:
            data = response.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        # A watch: relay each chunk as it comes; the body ends when the connection does.
        self.send_header("Connection", "close")
        self.end_headers()
        while chunk := response.read1(65536):
            self.wfile.write(chunk)
            self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


def _decoded(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    return json.loads(raw) if "json" in content_type else raw.decode(errors="replace")


def _is_watch(path: str, query: str) -> bool:
    flags = parse_qs(query).get("watch", [])
    return "/watch/" in path or any(v in ("true", "1", "True") for v in flags)

"""The real Kubernetes custom-resource API server for the k8s tests.

Runs etcd and apiextensions-apiserver (both built from Debian's packages by
``make apiserver``, farm/devapiserver.py) as child processes on 127.0.0.1, with the
flags issue 13 found necessary, and stops them by pid. tests/k8s/router.py puts them
and the fake behind one address. Callers: the fixtures in tests/k8s/conftest.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.k8s.realpki import Credentials, kubeconfig

#: Admission plugins that wait for core informers this server has no API for, and
#: answer 403 "not yet ready" until then (forever).
DISABLED_ADMISSION = (
    "NamespaceLifecycle",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "MutatingAdmissionPolicy",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _decoded(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    return json.loads(raw) if "json" in content_type else raw.decode(errors="replace")

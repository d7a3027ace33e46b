"""Certificates and kubeconfigs for the real API server in the k8s tests: a CA for
``--client-ca-file`` and a client certificate it signed for a ``system:masters`` member.

Callers: tests/k8s/realapi.py and the fixtures in tests/k8s/conftest.py.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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

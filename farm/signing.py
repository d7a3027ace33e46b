"""The installation's ed25519 signing key and DSSE envelopes signed with it.

Callers: ``farm.provenance`` signs each build's statement; ``farm.verify`` checks an
envelope. The private key is created once per installation under ``$FARM_HOME/keys``
with mode 0600 and refused if anyone else can read it; the public key sits next to it
for consumers (``farm verify --key``). DSSE: https://github.com/secure-systems-lab/dsse
(protocol.md), signatures over PAE(payloadType, payload).
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from farm.errors import InfrastructureError, InputError, VerificationError

PRIVATE_NAME = "provenance-ed25519.pem"
PUBLIC_NAME = "provenance-ed25519.pub.pem"


def key_dir(home: Path) -> Path:
    return home / "keys"


def load_or_create_key(home: Path) -> Ed25519PrivateKey:
    """This installation's signing key, created on first use (0600, never overwritten).

    Raises InfrastructureError if the key file is readable by group or others.
    """
    directory = key_dir(home)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / PRIVATE_NAME
    if not path.exists():
        _create(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InfrastructureError(f"{path} has mode {mode:o}; run `chmod 600 {path}`")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InfrastructureError(f"{path} is not an ed25519 key; move it away to get a new one")
    if not (directory / PUBLIC_NAME).exists():  # consumers need it; it is derived, so rewrite
        _write_public(key, directory / PUBLIC_NAME)
    return key


def _create(path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:  # O_EXCL: two farms starting at once keep the first key, never a mix
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    _write_public(key, path.parent / PUBLIC_NAME)


def _write_public(key: Ed25519PrivateKey, path: Path) -> None:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(public)
    path.chmod(0o644)


def public_key_path(home: Path) -> Path:
    return key_dir(home) / PUBLIC_NAME


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Raises InputError when ``path`` is missing or not an ed25519 public key."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"--key {path}: cannot read an ed25519 public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"--key {path}: not an ed25519 public key")
    return key


def keyid(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign(payload_type: str, payload: bytes, key: Ed25519PrivateKey) -> dict[str, Any]:
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {
                "keyid": keyid(key.public_key()),
                "sig": base64.b64encode(key.sign(pae(payload_type, payload))).decode(),
            }
        ],
    }


def open_envelope(envelope: Any, key: Ed25519PublicKey, payload_type: str) -> bytes:
    """The payload of ``envelope`` if ``key`` signed it. Raises VerificationError."""
    try:
        got_type, payload = envelope["payloadType"], base64.b64decode(envelope["payload"])
        sigs = [base64.b64decode(s["sig"]) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"not a DSSE envelope ({exc!r})") from None
    if got_type != payload_type:
        raise VerificationError(f"payloadType is {got_type!r}, expected {payload_type!r}")
    for sig in sigs:
        try:
            key.verify(sig, pae(got_type, payload))
            return payload
        except InvalidSignature:
            continue
    raise VerificationError(f"no signature in the envelope verifies with key {keyid(key)}")

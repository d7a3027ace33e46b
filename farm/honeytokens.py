"""Honeytokens: fake credentials planted in every build's sandbox, fresh per build.

Callers: ``farm.runner`` generates a :class:`Honeytokens` per build, plants it
(:func:`plant`: files in the build's HOME, AWS variables in its environment), marks the
classified actions that read or leak it (:class:`Marker`), redacts the log as it streams
(:class:`Redactor`) and refuses artifacts that contain a token (:func:`found_in_file`).

Every value is random, made here, and never a real secret. A build has no reason to read
any of them: a read is a high-severity ``sensitive_read``, and a token's value in a later
recorded action (argv, a path, a name resolved, an address) marks the build as
exfiltrating. The values exist only in this process's memory and in the sandbox: every
stored log, report and provenance carries ``[honeytoken:KIND]`` instead.
"""

from __future__ import annotations

import os
import re
import secrets
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from farm.observe.classify import BlockedAction
from farm.policy import TMP
from farm.sandbox import Mount, SandboxSpec

#: The sandbox HOME (farm.policy.baseline_env), here a directory of the build's capped
#: filesystem mounted over the scratch tmpfs, so the tokens are there from the start.
HOME = f"{TMP}/home"
KINDS = ("ssh", "aws", "cargo", "git")
#: Files planted below HOME, with the kind of token each holds.
FILES = {
    ".ssh/id_ed25519": "ssh",
    ".aws/credentials": "aws",
    ".cargo/credentials.toml": "cargo",
    ".git-credentials": "git",
}
#: Environment variables set in the sandbox (reserved: a spec cannot set them).
ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
#: A fragment of the SSH key shorter than this is not looked for (too little entropy).
MIN_FRAGMENT = 24
_AWS_ID = string.ascii_uppercase + "234567"  # AWS key ids are base32
_B64 = string.ascii_letters + string.digits + "+/"
_ALNUM = string.ascii_letters + string.digits


def _random(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _ssh_key() -> str:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return pem.decode()


@dataclass(frozen=True)
class Honeytokens:
    """One build's fake credentials."""

    aws_key_id: str
    aws_secret: str
    cargo_token: str
    git_token: str
    ssh_key: str

    @classmethod
    def generate(cls) -> Honeytokens:
        return cls(
            aws_key_id="AKIA" + _random(_AWS_ID, 16),
            aws_secret=_random(_B64, 40),
            cargo_token="cio" + _random(_ALNUM, 32),
            git_token="ghp_" + _random(_ALNUM, 36),
            ssh_key=_ssh_key(),
        )

    def env(self) -> dict[str, str]:
        return dict(
            zip(ENV, (self.aws_key_id, self.aws_secret, "us-east-1"), strict=True),
        )

    def files(self) -> dict[str, str]:
        """Path below HOME -> content, as the real tools write them."""
        return {
            ".ssh/id_ed25519": self.ssh_key,
            ".aws/credentials": (
                f"[default]\naws_access_key_id = {self.aws_key_id}\n"
                f"aws_secret_access_key = {self.aws_secret}\n"
            ),
            ".cargo/credentials.toml": f'[registry]\ntoken = "{self.cargo_token}"\n',
            ".git-credentials": f"https://farm-ci:{self.git_token}@github.com\n",
        }

    def needles(self) -> list[tuple[str, str]]:
        """(kind, value) to look for, longest first: each token, the whole SSH key, and
        each line of its body that holds key material (the lines every OpenSSH ed25519
        key shares are left out: they would match any key)."""
        found = [
            ("aws", self.aws_key_id),
            ("aws", self.aws_secret),
            ("cargo", self.cargo_token),
            ("git", self.git_token),
            ("ssh", self.ssh_key.strip()),
        ]
        shared = set(_ssh_key().splitlines())
        body = [line for line in self.ssh_key.splitlines() if not line.startswith("-----")]
        found += [("ssh", ln) for ln in body if ln not in shared and len(ln) >= MIN_FRAGMENT]
        return sorted(found, key=lambda kv: -len(kv[1]))


def plant(sandbox: SandboxSpec, tokens: Honeytokens, home: Path) -> SandboxSpec:
    """Write the token files into ``home`` (a directory on the build's capped filesystem,
    owned by ``uid``) and return ``sandbox`` with it mounted as HOME and the AWS variables
    set. The build may read, change or delete them; farm reads nothing back."""
    uid, _, gid = sandbox.user.partition(":")
    owner = (int(uid), int(gid or uid))
    home.mkdir(mode=0o755)
    os.chown(home, *owner)
    for rel, content in tokens.files().items():
        path = home / rel
        if path.parent != home:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            os.chown(path.parent, *owner)
        path.write_text(content)
        os.chmod(path, 0o600)
        os.chown(path, *owner)
    mounts = [*sandbox.mounts, Mount(source=home, target=HOME, read_only=False)]
    env = {**sandbox.env, **tokens.env()}
    return sandbox.model_copy(update={"mounts": mounts, "env": env})


class Finder:
    """Finds and replaces every needle of a build's tokens, case-insensitively (a name
    resolved is lower-cased by the resolver)."""

    def __init__(self, tokens: Honeytokens) -> None:
        pairs = tokens.needles()
        self.longest = max(len(v) for _, v in pairs)
        self._kind = {v.lower(): k for k, v in reversed(pairs)}
        alternation = "|".join(re.escape(v) for _, v in pairs)
        self._text = re.compile(alternation, re.IGNORECASE)
        self._bytes = re.compile(alternation.encode(), re.IGNORECASE)
        # For scanning outputs: the regex's case-insensitive alternation took 1.3 s on a
        # 6.7 MB binary (docs/performance.md, "Where a layered rebuild's time goes");
        # bytes.lower() folds ASCII exactly as re.IGNORECASE does on bytes, and find()
        # per needle is a memchr-speed scan.
        self._lowered = [(k, v.encode().lower()) for k, v in pairs]

    def kinds(self, text: str) -> set[str]:
        return {self._kind[m.group().lower()] for m in self._text.finditer(text)}

    def redact(self, text: str) -> str:
        return self._text.sub(lambda m: f"[honeytoken:{self._kind[m.group().lower()]}]", text)

    def search_bytes(self, data: bytes) -> re.Match[bytes] | None:
        return self._bytes.search(data)

    def first_kind(self, data: bytes) -> str | None:
        """The kind of the leftmost needle in ``data`` (ties: the earlier needle, as the
        regex's alternation picks), case-insensitively; what :meth:`search_bytes` with
        :meth:`kind_of` would give, without the regex's cost."""
        low, best = data.lower(), None
        for kind, needle in self._lowered:
            at = low.find(needle)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, kind)
        return best[1] if best else None

    def kind_of(self, match: re.Match[bytes]) -> str:
        return self._kind[match.group().decode("ascii", "replace").lower()]

    def redact_bytes(self, data: bytes, end: int | None = None) -> tuple[bytes, int]:
        """``data`` redacted up to the point from which a needle might still be cut
        short (``end``; None: all of it), and where that point is in ``data``."""
        out, pos = [], 0
        limit = len(data) if end is None else end
        for m in self._bytes.finditer(data):
            if m.start() >= limit:
                break
            out += [data[pos : m.start()], f"[honeytoken:{self.kind_of(m)}]".encode()]
            pos = m.end()
        cut = max(limit, pos)
        out.append(data[pos:cut])
        return b"".join(out), cut


class Redactor:
    """A log sink that passes every chunk on with the tokens replaced by
    ``[honeytoken:KIND]``. It holds back the last few hundred bytes, where a token may
    be cut by a chunk boundary, until more arrive or :meth:`close`."""

    def __init__(self, finder: Finder, downstream: Callable[[bytes], None]) -> None:
        self.finder = finder
        self.downstream = downstream
        self._pending = b""

    def write(self, chunk: bytes) -> None:
        data = self._pending + chunk
        # A needle that starts at or after ``safe`` may continue in the next chunk.
        safe = max(len(data) - self.finder.longest + 1, 0)
        out, cut = self.finder.redact_bytes(data, safe)
        self._pending = data[cut:]
        if out:
            self.downstream(out)

    def close(self) -> None:
        out, _ = self.finder.redact_bytes(self._pending)
        self._pending = b""
        if out:
            self.downstream(out)


#: Fields of an action a build controls the text of (where a leaked token would show).
TEXT_FIELDS = ("target", "spelled", "cwd", "address", "executable", "process_name")


@dataclass
class Marker:
    """Marks a stream of classified actions: a read of a planted file gets
    ``honeytoken`` and severity high; an action whose text holds a token value gets
    ``exfiltrated`` and severity high, and that text redacted. Counts what it saw."""

    finder: Finder
    read: set[str] = field(default_factory=set)
    exfiltrated: set[str] = field(default_factory=set)
    #: How many actions leaked a token (each is listed or counted by the verdict).
    leaks: int = 0

    def mark(self, actions: Iterable[BlockedAction]) -> Iterator[BlockedAction]:
        for action in actions:
            yield self._one(action)

    def _one(self, action: BlockedAction) -> BlockedAction:
        update: dict[str, object] = {}
        planted = planted_kind(action)
        if planted:
            self.read.add(planted)
            update |= {"honeytoken": planted, "severity": "high"}
        texts = [getattr(action, f) or "" for f in TEXT_FIELDS] + list(action.argv)
        leaked = set().union(*(self.finder.kinds(t) for t in texts))
        if leaked:
            self.exfiltrated |= leaked
            self.leaks += 1
            update |= {"exfiltrated": ",".join(sorted(leaked)), "severity": "high"}
            update |= {f: self.finder.redact(getattr(action, f) or "") for f in TEXT_FIELDS}
            update["argv"] = [self.finder.redact(a) for a in action.argv]
            if action.spelled is None:
                update["spelled"] = None
            if action.address is None:
                update["address"] = None
        return action.model_copy(update=update) if update else action


def planted_kind(action: BlockedAction) -> str | None:
    """The kind of token a sensitive read opened, if it is one farm planted."""
    if action.kind != "sensitive_read":
        return None
    for path in (action.target, action.spelled or ""):
        rel = path.removeprefix(HOME + "/")
        if rel != path and rel in FILES:
            return FILES[rel]
    return None


#: Bytes read at a time when an artifact is scanned.
SCAN_CHUNK = 1 << 20


def found_in_file(path: Path, finder: Finder) -> str | None:
    """The kind of the first token found in the file at ``path``, read in chunks that
    overlap by the longest needle, so memory stays bounded whatever its size."""
    overlap = finder.longest - 1
    tail = b""
    with path.open("rb") as fh:
        while chunk := fh.read(SCAN_CHUNK):
            data = tail + chunk
            if kind := finder.first_kind(data):
                return kind
            tail = data[-overlap:] if overlap else b""
    return None

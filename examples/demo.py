"""The main job: build examples/malicious-dep in the farm and show, from the host, that
every attack its dependency tried failed, that gVisor's record attributes each attempt
to the `evil` crate, and that enforce mode (the default) quarantined the build.

Run by `make demo`. It uses only the `farm` CLI, like a user would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "malicious-dep"
SECRET = "demo-canary-d3adb33f"


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def listen() -> tuple[int, list[bytes], threading.Event]:
    """A loopback TCP+UDP listener standing in for an attacker's server."""
    tcp = socket.create_server(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    got: list[bytes] = []
    stop = threading.Event()
    for sock in (tcp, udp):
        sock.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            for recv in (lambda: tcp.accept()[0].recv(4096), lambda: udp.recv(4096)):
                with contextlib.suppress(TimeoutError):
                    got.append(recv())

    threading.Thread(target=serve, daemon=True).start()
    return port, got, stop


def host_cmdlines() -> list[bytes]:
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # the process may exit while we look
            found.append(path.read_bytes())
    return found


def farm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "farm"
    return subprocess.run([str(exe), *args], text=True, capture_output=True, env=env)


def main() -> int:
    before = tree_digest(SOURCE)
    port, received, stop = listen()
    with tempfile.TemporaryDirectory(prefix="farm-demo-") as tmp:
        marker = Path(tmp) / "marker"
        marker.mkdir()
        marker.chmod(0o777)
        env = {**os.environ, "FARM_DEMO_SECRET": SECRET}  # on the host, never passed in
        print(f"farm demo: building {SOURCE} in gVisor (listener on 127.0.0.1:{port}) ...")
        done = farm(
            "build",
            str(SOURCE),
            "--json",  # observed, enforce mode: the defaults
            "--env",
            f"FARM_DEMO_EXFIL_PORT={port}",
            "--env",
            f"FARM_DEMO_MARKER_DIR={marker}",
            env=env,
        )
        stop.set()
        if done.returncode not in (0, 3):
            print(done.stdout, done.stderr, sep="\n")
            return done.returncode
        out = json.loads(done.stdout)
        log = farm("logs", out["id"]).stdout
        report = farm("report", out["id"]).stdout
        markers = list(marker.iterdir())
        record = json.loads(farm("show", out["id"], "--json").stdout)
        container = record["container_id"]

    print(f"\n$ farm report {out['id']}   (what gVisor saw, attributed to the crate)")
    print(report)
    print("\nwhat evil's build.rs claims it tried (its own words, from the build log):")
    for line in log.splitlines():
        if "evil: " in line:
            print("  " + line.split("warning: ", 1)[-1])
    checks = {
        "the loopback listener received nothing": not received,
        "no file appeared in the host marker directory": not markers,
        "the top-level crate's source is unchanged": tree_digest(SOURCE) == before,
        "the host secret is absent from the log and the record": SECRET not in log
        and SECRET not in json.dumps(record),
        "no /usr/bin/farm-pwned on the host": not Path("/usr/bin/farm-pwned").exists(),
        "every observed action is attributed to evil 0.3.1": bool(out["blocked_actions"])
        and all(a["package"] == "evil" and a["version"] == "0.3.1" for a in out["blocked_actions"]),
        "gVisor recorded every class evil tried (secrets, network, writes, a daemon)": {
            a["kind"] for a in out["blocked_actions"]
        }
        == {"sensitive_read", "network", "fs_write_denied", "persistence"},
        "enforce mode quarantined the build (exit 3) and published no artifact": (
            done.returncode == 3 and out["status"] == "quarantined" and out["artifacts"] == []
        ),
        "the daemon it left died with the sandbox (no process names its container)": not any(
            container.encode() in cmdline for cmdline in host_cmdlines()
        ),
    }
    print("\nchecked from the host:")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

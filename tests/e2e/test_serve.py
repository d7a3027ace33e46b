"""`farm serve` as a real process on loopback, driven over real HTTP, building in real
runsc sandboxes: metrics by scrape (and promtool), the fair queue and its limits, crash
recovery, graceful stop, tenant isolation and `farm build` through the service."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm.backends.hostprocs import sandbox_pids
from farm.devtools import tool
from farm.queue import Queue, State
from farm.records import Status
from farm.settings import BUILD_LABEL, DEFAULT_IMAGE, HOME_LABEL, MANAGED_LABEL
from farm.store import Store

from .conftest import farm, farm_containers, farm_env, wait_for

TINY = ["sh", "-c", "echo building; echo x > /out/x"]


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: Path

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, raw = self.call(method, path, body, token)
        assert status in (200, 202), (status, raw)
        return json.loads(raw)

    def submit(
        self, source: Path, argv: list[str] | None = TINY, token: str | None = None, **kw: Any
    ) -> str:
        spec = {"source": str(source), "argv": argv, "outputs": ["out/x"], **kw}
        return self.json("POST", "/v1/builds", spec, token)["id"]

    def wait_done(self, build_id: str, token: str | None = None, timeout: float = 180) -> dict:
        def done() -> dict | None:
            view = self.json("GET", f"/v1/builds/{build_id}", token=token)
            return view if view["state"] == "done" else None

        return wait_for(done, timeout=timeout, what=f"build {build_id}")

    def scrape(self) -> tuple[str, dict[tuple[str, frozenset], float]]:
        status, raw = self.call("GET", "/metrics")
        assert status == 200
        text = raw.decode()
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        return text, samples

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=120)


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def serve(home: Path, tmp_path: Path):
    """Start `farm serve` with extra args; every instance is stopped (SIGTERM, exit 0)
    before the `home` fixture checks that nothing was left behind."""
    started: list[Served] = []

    def start(*args: str) -> Served:
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "farm.cli", "serve", "--port", "0", *args],
                env=farm_env(home),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        url = wait_for(
            lambda: (
                proc.poll() is None and re.search(r"listening on (http://\S+)", log.read_text())
            ),
            timeout=60,
            what=f"farm serve to listen: {log.read_text() if log.exists() else ''}",
        ).group(1)
        started.append(Served(proc, url, log))
        return started[-1]

    yield start
    for served in started:
        if served.proc.poll() is None:
            assert served.stop() == 0, served.log.read_text()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "src" / "proj"
    p.mkdir(parents=True)
    (p / "input.txt").write_text("data\n")
    return p


def running_sandbox(client, home: Path) -> list:
    return [c for c in farm_containers(client, home) if c.status == "running"]


def test_metrics_by_scrape_and_promtool(serve, project: Path, tmp_path: Path, client, home) -> None:
    served = serve("--concurrency", "1", "--source-root", str(tmp_path / "src"))
    _, before = served.scrape()
    # Bad input is refused per field before anything is queued.
    status, raw = served.call(
        "POST",
        "/v1/builds",
        {"source": str(project), "outputs": ["../x"], "resources": {"memory": "lots"}},
    )
    problems = json.loads(raw)["problems"]
    assert status == 400
    assert (
        "outputs[0]: '../x' escapes the output directory; use a path under out/ or target/"
        in problems
    )
    assert any(p.startswith("resources.memory: 'lots' is not a size") for p in problems)

    slow = served.submit(project, ["sleep", "300"], tenant="metrics", timeout_seconds=3)
    wait_for(lambda: running_sandbox(client, home), what="the slow build's sandbox")
    ok = served.submit(project, tenant="metrics")
    bad = served.submit(project, ["sh", "-c", "exit 3"], tenant="metrics")
    _, during = served.scrape()
    assert sample(during, "farm_sandboxes_active") == 1
    assert sample(during, "farm_builds_queued", tenant="metrics") == 2

    results = {b: served.wait_done(b)["result"] for b in (slow, ok, bad)}
    assert results == {slow: "timed_out", ok: "succeeded", bad: "failed"}
    text, after = served.scrape()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    for result in ("succeeded", "failed", "timed_out"):
        assert delta("farm_builds_total", tenant="metrics", result=result) == 1, result
    assert delta("farm_build_duration_seconds_count", tenant="metrics") == 3
    assert delta("farm_build_queue_wait_seconds_count", tenant="metrics") == 3
    # The two builds queued behind the 3 s one waited for it.
    assert delta("farm_build_queue_wait_seconds_sum", tenant="metrics") > 2
    assert delta("farm_teardown_seconds_count") == 3
    assert sample(after, "farm_builds_queued", tenant="metrics") == 0
    assert sample(after, "farm_sandboxes_active") == 0
    assert not any("/" in dict(labels).get("tenant", "") for _, labels in after)
    lint = subprocess.run(
        [str(tool("promtool")), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (a finish before a start frees the slot)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(f, -1) for _, f in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_eight_builds_at_concurrency_two_respect_tenant_limits(
    serve, project: Path, tmp_path: Path
) -> None:
    """Round-robin order is unit-tested in tests/unit/test_queue.py; here the real pool."""
    served = serve(
        *("--concurrency", "2", "--tenant-limit", "1", "--source-root", str(tmp_path / "src"))
    )
    slow = ["sh", "-c", "sleep 1; echo x > /out/x"]
    # Identical builds: bypass the cache, or all but the first would be served from it.
    ids = [served.submit(project, slow, tenant="alpha", no_cache=True) for _ in range(6)]
    ids += [served.submit(project, slow, tenant="beta", no_cache=True) for _ in range(2)]
    views = [served.wait_done(b) for b in ids]
    assert [v["result"] for v in views] == ["succeeded"] * 8
    assert all(v["summary"]["artifacts"][0]["path"] == "out/x" for v in views)

    # The service's own record of when each build held a worker.
    spans = {
        t: [(v["started_at"], v["finished_at"]) for v in views if v["tenant"] == t]
        for t in ("alpha", "beta")
    }
    assert overlap(spans["alpha"] + spans["beta"]) == 2  # the pool is used, never exceeded
    # With a free worker and alpha's backlog waiting, alpha still never ran two at once.
    assert overlap(spans["alpha"]) == 1
    assert overlap(spans["beta"]) == 1
    # beta, submitted after all of alpha, did not wait for alpha's backlog.
    assert max(f for _, f in spans["beta"]) < sorted(s for s, _ in spans["alpha"])[-1]


def test_crash_marks_the_running_build_lost_reaps_it_and_loses_no_queued_build(
    serve, project: Path, tmp_path: Path, client, home: Path
) -> None:
    args = ("--concurrency", "1", "--source-root", str(tmp_path / "src"))
    first = serve(*args)
    doomed = first.submit(project, ["sleep", "300"])
    queued = [first.submit(project) for _ in range(3)]
    wait_for(lambda: running_sandbox(client, home), what="the first build's sandbox")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # a crash: no cleanup at all
    assert farm_containers(client, home), "the crashed service's sandbox is still there"

    second = serve(*args)
    assert f"reaped build {doomed}" in second.log.read_text()
    assert doomed not in [c.labels.get(BUILD_LABEL) for c in farm_containers(client, home)]
    assert [second.wait_done(b)["result"] for b in queued] == ["succeeded"] * 3
    lost = second.json("GET", f"/v1/builds/{doomed}")
    assert lost["state"] == "done" and lost["result"] == "lost" and lost["farm_exit_code"] == 4
    record = Store(home).get(doomed)
    assert record.status is Status.LOST and record.container_id
    assert sandbox_pids(record.container_id) == []
    _, samples = second.scrape()
    assert sample(samples, "farm_sandboxes_reaped_total") == 1
    assert sample(samples, "farm_builds_total", tenant="default", result="lost") == 1


def test_sigterm_tears_down_and_requeues_the_running_build(
    serve, project: Path, tmp_path: Path, client, home: Path
) -> None:
    served = serve("--concurrency", "1", "--source-root", str(tmp_path / "src"))
    build = served.submit(project, ["sleep", "300"])
    wait_for(lambda: running_sandbox(client, home), what="the sandbox")
    assert served.stop(signal.SIGTERM) == 0, served.log.read_text()
    assert farm_containers(client, home) == []
    assert Queue(home / "index.sqlite").get(build).state is State.QUEUED
    assert Store(home).get(build).status is Status.CANCELLED


def test_a_tenant_cannot_see_another_tenants_build(serve, tmp_path: Path) -> None:
    alpha, beta = "a" * 32, "b" * 32
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tenants": {"alpha": alpha, "beta": beta}}))
    tokens.chmod(0o600)
    root = tmp_path / "src"
    source = root / "alpha" / "proj"
    source.mkdir(parents=True)
    (source / "secret.txt").write_text("alpha-only-secret\n")
    served = serve("--tokens", str(tokens), "--source-root", str(root))
    argv = ["sh", "-c", "cat secret.txt; cp secret.txt /out/x"]
    build = served.submit(source, argv, token=alpha)
    assert served.wait_done(build, token=alpha)["result"] == "succeeded"

    paths = [
        f"/v1/builds/{build}{p}" for p in ("", "/report", "/logs", "/artifacts", "/artifacts/out/x")
    ]
    for path in paths:
        status, body = served.call("GET", path, token=alpha)
        assert status == 200, path
        status, body = served.call("GET", path, token=beta)
        assert status == 404 and b"alpha-only-secret" not in body, (path, body)
        assert served.call("GET", path)[0] == 401
        assert served.call("GET", path, token="c" * 32)[0] == 401
    assert (
        served.call("GET", f"/v1/builds/{build}/artifacts/out/x", token=alpha)[1]
        == b"alpha-only-secret\n"
    )
    assert served.json("GET", "/v1/builds", token=beta) == []
    assert served.call("POST", f"/v1/builds/{build}/cancel", {}, beta)[0] == 404
    # Nor can beta build alpha's tree, or act as alpha.
    status, body = served.call(
        "POST", "/v1/builds", {"source": str(source), "argv": argv, "outputs": ["out/x"]}, beta
    )
    assert status == 400 and b"outside this service's source directory" in body
    status, body = served.call(
        "POST", "/v1/builds", {"source": str(source), "argv": argv, "tenant": "alpha"}, beta
    )
    assert status == 400 and b"this token acts for tenant 'beta'" in body
    assert [e["id"] for e in served.json("GET", "/v1/builds", token=alpha)] == [build]


def test_farm_build_through_the_service(serve, project: Path, tmp_path: Path, home: Path) -> None:
    served = serve("--source-root", str(tmp_path / "src"))
    env = {"FARM_SERVER": served.url}
    done = farm(home, "build", str(project), "--json", "--output", "out/x", "--", *TINY, **env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    local = farm(home, "build", str(project), "--json", "--local", "--output", "out/x", "--", *TINY)
    assert local.returncode == 0, local.stderr
    assert set(out) == set(json.loads(local.stdout))  # the same shape as a local build
    assert out["status"] == "succeeded" and out["artifacts"][0]["path"] == "out/x"
    assert served.json("GET", f"/v1/builds/{out['id']}")["state"] == "done"

    done = farm(
        home, "build", str(project), "--follow", "--", "sh", "-c", "echo streamed; exit 3", **env
    )
    assert done.returncode == 1
    assert done.stdout.startswith("streamed\n") and ": failed (exit 3," in done.stdout

    done = farm(home, "build", str(project), "--output", "../x", "--", "true", **env)
    assert done.returncode == 2 and "outputs[0]: '../x' escapes" in done.stderr

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = farm(home, "build", str(outside), "--", "true", **env)
    assert done.returncode == 2 and "outside this service's source directory" in done.stderr

    done = farm(home, "build", str(project), "--", "true", FARM_SERVER="http://127.0.0.1:9")
    assert done.returncode == 4 and "cannot reach the farm service" in done.stderr


def test_blocked_actions_of_malicious_dep_rise_in_a_scrape(serve) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    served = serve("--concurrency", "1", "--source-root", str(examples))
    _, before = served.scrape()
    build = served.submit(examples / "malicious-dep", argv=None, outputs=None, tenant="evil-test")
    view = served.wait_done(build, timeout=900)
    # Enforce mode (the default) quarantines it: exit 3, artifacts withheld.
    assert (view["result"], view["farm_exit_code"]) == ("quarantined", 3), view
    record = json.loads(served.call("GET", f"/v1/builds/{build}/report")[1])
    assert record["artifacts"] == []
    _, after = served.scrape()

    kinds: dict[str, int] = {}
    for action in record["blocked_actions"]:
        if not action["allowed"]:
            kinds[action["kind"]] = kinds.get(action["kind"], 0) + 1
    assert {"network", "fs_write_denied", "sensitive_read"} <= set(kinds), kinds
    for kind, count in kinds.items():
        name, labels = "farm_blocked_actions_total", {"tenant": "evil-test", "kind": kind}
        assert sample(after, name, **labels) - sample(before, name, **labels) == count, kind
    name = "farm_builds_total"
    labels = {"tenant": "evil-test", "result": "quarantined"}
    assert sample(after, name, **labels) - sample(before, name, **labels) == 1
    # Lost trace events reach the counter exactly as the build's record gives them.
    seen = record["observation"]
    assert seen["mode"] == "enforce" and seen["events"] > 0
    dropped = sample(after, "farm_observer_events_dropped_total")
    assert dropped - sample(before, "farm_observer_events_dropped_total") == (
        seen["dropped"] + seen["unparseable"] + seen["overflow"]
    )


def test_cancel_a_running_and_a_queued_build_and_ctrl_c_through_the_cli(
    serve, project: Path, tmp_path: Path, client, home: Path
) -> None:
    served = serve("--concurrency", "1", "--source-root", str(tmp_path / "src"))
    running = served.submit(project, ["sleep", "300"])
    queued = served.submit(project)
    wait_for(lambda: running_sandbox(client, home), what="the sandbox")
    assert served.json("POST", f"/v1/builds/{queued}/cancel")["result"] == "cancelled"
    view = served.json("POST", f"/v1/builds/{running}/cancel")
    assert (view["state"], view["result"], view["farm_exit_code"]) == ("done", "cancelled", 1)
    assert farm_containers(client, home) == []
    assert Store(home).get(running).status is Status.CANCELLED
    assert served.json("GET", f"/v1/builds/{queued}")["summary"] is None  # it never ran

    # Ctrl-C on `farm build` through the service cancels, as it does for a local build.
    cli = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "build", str(project), "--", "sleep", "300"],
        env=farm_env(home, FARM_SERVER=served.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: running_sandbox(client, home), what="the CLI's sandbox")
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == 1 and "cancelled in the service" in err, err
    assert farm_containers(client, home) == []
    assert served.json("GET", "/v1/builds")[0]["result"] == "cancelled"


def test_the_service_checks_caches_and_counts(serve, project: Path, tmp_path: Path, home) -> None:
    served = serve("--source-root", str(tmp_path / "src"))
    first = served.wait_done(served.submit(project, check=2))
    assert first["result"] == "succeeded", first
    assert first["summary"]["reproducibility"]["result"] == "reproducible"
    again = served.wait_done(served.submit(project, check=2))
    assert again["result"] == "succeeded" and again["summary"]["cached_from"] == first["id"]
    hit = Store(home).get(again["id"])
    assert hit.container_id is None and hit.notes[0].startswith("cached: verified 2")
    _, samples = served.scrape()
    assert sample(samples, "farm_cache_requests_total", result="hit") == 1
    assert sample(samples, "farm_cache_requests_total", result="miss") == 1
    labels = {"tenant": "default", "result": "reproducible"}
    assert sample(samples, "farm_reproducibility_checks_total", **labels) == 1
    status, raw = served.call("POST", "/v1/builds", {"source": str(project), "check": 1})
    assert status == 400 and "give between 2 and 10 runs" in json.loads(raw)["error"]
    # `farm build --check 2` through the service: the same request, served and said so.
    flags = ["--check", "2", "--output", "out/x"]
    done = farm(home, "build", str(project), *flags, "--", *TINY, FARM_SERVER=served.url)
    assert done.returncode == 0 and "farm: cached: verified 2" in done.stderr, done.stderr


def test_a_sandbox_outliving_its_build_counts_as_leaked(
    serve, project: Path, tmp_path: Path, client, home
) -> None:
    served = serve("--source-root", str(tmp_path / "src"))
    done = served.wait_done(served.submit(project))
    assert done["result"] == "succeeded"
    assert sample(served.scrape()[1], "farm_sandboxes_leaked") == 0
    # A container with farm's labels for that finished build: what a failed teardown
    # leaves. Created, never started; the `home` fixture fails if it is not removed.
    labels = {MANAGED_LABEL: "true", HOME_LABEL: str(home.resolve()), BUILD_LABEL: done["id"]}
    leftover = client.containers.create(DEFAULT_IMAGE, ["true"], labels=labels)
    try:
        assert sample(served.scrape()[1], "farm_sandboxes_leaked") == 1
    finally:
        leftover.remove(force=True)
    assert sample(served.scrape()[1], "farm_sandboxes_leaked") == 0

"""Behaviour profiles end to end, in real runsc sandboxes (issue 15 items 1 and 2).

Two clean builds of examples/hello-serde give identical profiles; a dependency whose
version B's build script adds a secret read is caught by the profile diff, noted in the
report as ``behaviour_changed`` (high), quarantined by
``observe.quarantine_on_behaviour_change`` though the read itself is allowed, counted in
``farm_behaviour_changes_total`` on the service's /metrics, and named by ``farm diff``.
"""

from __future__ import annotations

import json
from pathlib import Path

from farm.profiles.store import ProfileStore

from . import test_serve
from .conftest import ROOT, farm
from .test_serve import sample

serve = test_serve.serve  # the fixture that runs a real `farm serve`

HELLO = ROOT / "examples" / "hello-serde"
SECRET = "/tmp/home/.ssh/id_rsa"  # $HOME is /tmp/home in every sandbox (farm.policy)

BUILD_RS = """use std::fs;
fn main() {{
    // Version A reads its own data file; B also tries the builder's SSH key.
    let _ = fs::read_to_string("data.txt");
    {extra}
    println!("cargo:rerun-if-changed=build.rs");
}}
"""
STEAL = (
    'let home = std::env::var("HOME").unwrap_or_default();\n'
    '    let _ = fs::read(format!("{home}/.ssh/id_rsa"));'
)


def tattle_project(root: Path, version: str, *, steals: bool) -> Path:
    """An app depending on path crate ``tattle`` at ``version`` (Cargo.lock names it)."""
    app = root / f"app-{version}"
    (app / "src").mkdir(parents=True)
    (app / "tattle" / "src").mkdir(parents=True)
    (app / "Cargo.toml").write_text(
        '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n\n'
        f'[dependencies]\ntattle = {{ path = "tattle", version = "{version}" }}\n'
    )
    (app / "Cargo.lock").write_text(
        "version = 3\n\n"
        '[[package]]\nname = "app"\nversion = "0.1.0"\ndependencies = [\n "tattle",\n]\n\n'
        f'[[package]]\nname = "tattle"\nversion = "{version}"\n'
    )
    (app / "src" / "main.rs").write_text('fn main() { println!("{}", tattle::hi()); }\n')
    (app / "tattle" / "Cargo.toml").write_text(
        f'[package]\nname = "tattle"\nversion = "{version}"\nedition = "2021"\nbuild = "build.rs"\n'
    )
    (app / "tattle" / "data.txt").write_text("data\n")
    (app / "tattle" / "build.rs").write_text(BUILD_RS.format(extra=STEAL if steals else ""))
    (app / "tattle" / "src" / "lib.rs").write_text('pub fn hi() -> &\'static str { "hi" }\n')
    return app


def test_two_clean_builds_give_identical_profiles(home: Path) -> None:
    ids = []
    for _ in range(2):
        done = farm(home, "build", str(HELLO), "--json")
        assert done.returncode == 0, done.stderr
        ids.append(json.loads(done.stdout)["id"])
    store = ProfileStore(home)
    first, second = ({p.key(): p for p in store.of_build(i)} for i in ids)
    assert first and first == second
    assert any("proc macro" in p.roles for p in first.values())  # serde_derive
    assert any("build script" in p.roles for p in first.values())
    record = json.loads(farm(home, "report", ids[1], "--json").stdout)
    assert record["behaviour_changed"] == []


def test_a_secret_read_in_a_new_version_is_a_high_behaviour_change(
    serve, home: Path, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    served = serve("--concurrency", "1", "--source-root", str(root))
    a = tattle_project(root, "0.1.0", steals=False)
    b = tattle_project(root, "0.2.0", steals=True)
    observe = {
        "mode": "enforce",
        "quarantine_on_behaviour_change": "high",
        # Every single action is allowed: only the change can quarantine.
        "allow": [{"package": "tattle", "kind": "sensitive_read"}],
    }
    _, before = served.scrape()
    first = served.submit(a, argv=None, outputs=None, tenant="prof", observe=observe)
    view = served.wait_done(first, timeout=600)
    assert view["result"] == "succeeded", view
    second = served.submit(b, argv=None, outputs=None, tenant="prof", observe=observe)
    view = served.wait_done(second, timeout=600)
    assert view["result"] == "quarantined", view
    _, after = served.scrape()

    def moved(severity: str) -> float:
        name = "farm_behaviour_changes_total"
        return sample(after, name, tenant="prof", severity=severity) - sample(
            before, name, tenant="prof", severity=severity
        )

    assert (moved("high"), moved("medium"), moved("info")) == (1, 0, 0)

    report = json.loads(farm(home, "report", second, "--json", "--local").stdout)
    [change] = report["behaviour_changed"]
    assert (change["package"], change["version"], change["base_version"]) == (
        "tattle",
        "0.2.0",
        "0.1.0",
    )
    assert change["severity"] == "high"
    assert [(c["aspect"], c["entry"], c["severity"]) for c in change["changes"]] == [
        ("reads", SECRET, "high")
    ]
    assert all(a["allowed"] for a in report["actions"])
    human = farm(home, "report", second, "--local").stdout
    assert "behaviour_changed (high): tattle 0.2.0 vs 0.1.0" in human
    assert "QUARANTINED: behaviour changed (high or worse): tattle 0.1.0 -> 0.2.0" in human

    done = farm(home, "diff", "tattle@0.1.0", "@0.2.0", "--tenant", "prof", "--json")
    assert done.returncode == 0, done.stderr
    diff = json.loads(done.stdout)
    assert [(c["change"], c["aspect"], c["entry"]) for c in diff["changes"]] == [
        ("added", "reads", SECRET)
    ]
    assert (diff["base_builds"], diff["new_builds"]) == ([first], [second])
    text = farm(home, "diff", "tattle@0.1.0", "@0.2.0", "--tenant", "prof").stdout
    print(text)  # the README's example
    assert f"+ reads       {SECRET}  [high]" in text

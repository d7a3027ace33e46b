"""A source tree whose git configuration names programs to run, built by `farm build`
and submitted to `farm serve`: nothing runs on the host, and the build still gets the
right SOURCE_DATE_EPOCH (issue 11, item 2). An out-of-root source gets one answer
from the real API, whether or not it exists (item 13)."""

from __future__ import annotations

import json
from pathlib import Path

from farm.policy import DEFAULT_EPOCH
from farm.store import Store
from tests.hostilegit import gitdir_file_tree, hostile_repo

from .conftest import farm
from .test_serve import serve  # noqa: F401  (the fixture)

EPOCH_ARGV = ["sh", "-c", 'printf %s "$SOURCE_DATE_EPOCH" > /out/epoch']


def test_farm_build_of_a_hostile_repository_runs_nothing(tmp_path: Path, home: Path) -> None:
    hostile = hostile_repo(tmp_path / "repo", tmp_path / "markers", packed=True)
    done = farm(
        home, "build", str(hostile.repo / "crate"), "--json", "--output", "out/epoch", "--",
        *EPOCH_ARGV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    (artifact,) = record["artifacts"]
    epoch = Store(home).blob_path(artifact["sha256"]).read_text()
    assert epoch == str(hostile.sub_epoch)  # the newest commit that touched crate/
    assert hostile.fired() == []


def test_farm_serve_with_hostile_repositories_inside_and_outside(serve, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "src"
    root.mkdir()
    markers = tmp_path / "markers"
    inside = hostile_repo(root / "repo", markers)
    outside = hostile_repo(tmp_path / "elsewhere", markers, packed=True)
    gitdir_file_tree(root / "worktree", outside.repo / ".git")
    (root / "to-outside").symlink_to(outside.repo)
    served = serve("--source-root", str(root))
    spec = {"argv": EPOCH_ARGV, "outputs": ["out/epoch"]}

    build = served.submit(inside.repo / "crate", **spec)
    assert served.wait_done(build)["result"] == "succeeded"
    status, epoch = served.call("GET", f"/v1/builds/{build}/artifacts/out/epoch")
    assert (status, epoch) == (200, str(inside.sub_epoch).encode())

    build = served.submit(root / "worktree", **spec)  # a .git file is not followed
    assert served.wait_done(build)["result"] == "succeeded"
    # No answer from the repository: farm's fixed default, not the target's history.
    fallback = served.call("GET", f"/v1/builds/{build}/artifacts/out/epoch")[1]
    assert fallback == str(DEFAULT_EPOCH).encode() != str(outside.epoch).encode()

    for source in (outside.repo, outside.repo / "crate", root / "to-outside"):
        status, body = served.call("POST", "/v1/builds", {"source": str(source), **spec})
        assert status == 400, body
    assert inside.fired() == [] and outside.fired() == []


def test_an_outside_source_gets_one_answer_whether_or_not_it_exists(serve, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "src"
    (root / "proj").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    (outside / "crate").mkdir(parents=True)
    (outside / "crate" / "Cargo.toml").write_text('[package]\nname = "x"\n')
    (root / "to-outside").symlink_to(outside)
    (root / "to-nowhere").symlink_to(tmp_path / "nowhere")
    served = serve("--source-root", str(root))
    spec = {"argv": EPOCH_ARGV, "outputs": ["out/epoch"]}
    answers = {}
    for name, source in {
        "outside": outside / "crate",
        "outside-missing": outside / "no-such-dir",
        "outside-no-argv": outside / "crate",
        "host-missing": Path("/root/no-such-dir"),
        "host-exists": Path("/root"),
        "dotdot": root / ".." / "elsewhere" / "crate",
        "dotdot-missing": root / ".." / "elsewhere" / "nothing",
    }.items():
        body_spec = (
            {"source": str(source)}
            if name == "outside-no-argv"
            else {"source": str(source), **spec}
        )
        status, body = served.call("POST", "/v1/builds", body_spec)
        assert status == 400, (name, body)
        answers[name] = body.decode().replace(json.dumps(str(source))[1:-1], "SOURCE")
    assert len(set(answers.values())) == 1, answers
    assert "outside this service's source directory" in answers["outside"]
    links = {}
    for link in ("to-outside", "to-nowhere"):
        for below in ("", "/crate", "/no-such-dir"):
            source = f"{root}/{link}{below}"
            status, body = served.call("POST", "/v1/builds", {"source": source, **spec})
            assert status == 400 and b"symlink" in body, body
            links[link + below] = body.decode().replace(source, "SOURCE")
    assert links["to-outside"] == links["to-nowhere"]
    assert links["to-outside/crate"] == links["to-nowhere/crate"]
    assert links["to-outside/no-such-dir"] == links["to-nowhere/no-such-dir"]

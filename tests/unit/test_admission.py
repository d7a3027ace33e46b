"""farm.admission and farm.imageref: operator ceilings and the image allowlist, decided
in one place for `farm build`, `farm serve` and the controller (their own tests drive
the real paths; these pin the rule itself, with attacker spellings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm import imageref
from farm.admission import Admission, Ceilings, ImageAllowlist, format_size
from farm.errors import InputError, NotAdmittedError, SpecError
from farm.settings import DEFAULT_IMAGE, Settings
from farm.spec import BuildSpec, build_spec

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def spec(tmp_path: Path, **fields: object) -> BuildSpec:
    return build_spec({"source": str(tmp_path), "argv": ["true"], **fields})


# --- canonical references ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("farm/rust:bookworm", "docker.io/farm/rust:bookworm"),
        ("docker.io/farm/rust:bookworm", "docker.io/farm/rust:bookworm"),
        ("index.docker.io/farm/rust:bookworm", "docker.io/farm/rust:bookworm"),
        ("farm/rust", "docker.io/farm/rust:latest"),
        ("debian", "docker.io/library/debian:latest"),
        ("docker.io/library/debian:12", "docker.io/library/debian:12"),
        ("localhost/farm/rust:bookworm", "localhost/farm/rust:bookworm"),
        ("registry.test:5000/farm/rust", "registry.test:5000/farm/rust:latest"),
        # A digest names the content; the tag beside it is not part of the identity.
        (f"farm/rust:bookworm@{DIGEST}", f"docker.io/farm/rust@{DIGEST}"),
        (f"farm/rust@{DIGEST}", f"docker.io/farm/rust@{DIGEST}"),
    ],
)
def test_references_are_compared_in_one_canonical_spelling(text: str, canonical: str) -> None:
    assert str(imageref.parse(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "Farm/rust:bookworm",  # upper case: refused, never lowered
        "DOCKER.IO/farm/rust:bookworm",
        "farm/rust:bookworm ",  # whitespace: refused, never stripped
        " farm/rust:bookworm",
        "farm/rust:book worm",
        "farm//rust:bookworm",
        "farm/../rust:bookworm",
        "farm/rust:",
        "farm/rust@sha256:abc",  # a short digest
        "farm/rust@sha512:" + "a" * 128,
        "sha256:" + "a" * 64,  # image ids and id prefixes: dockerd would look them up
        "a" * 64,
        "0123abcd",
        "sha256:0123ab",
        "farm/rust:bookworm\n",
        "farm/rust:*",  # a pattern is not a reference
    ],
)
def test_anything_outside_the_grammar_is_refused(text: str) -> None:
    with pytest.raises(imageref.ImageRefError):
        imageref.parse(text)


# --- the allowlist ----------------------------------------------------------------------


def allowed(patterns: list[str], image: str) -> bool:
    return ImageAllowlist(patterns).check(image) is None


def test_the_default_allows_only_farms_builder_image() -> None:
    assert ImageAllowlist().root == [DEFAULT_IMAGE] == ["farm/rust:bookworm"]
    assert allowed(ImageAllowlist().root, "farm/rust:bookworm")
    assert allowed(ImageAllowlist().root, "docker.io/farm/rust:bookworm")  # the same image
    for other in ("farm/rust", "farm/rust:latest", "farm/fetch:bookworm", "farm/farm:0.1.0"):
        assert not allowed(ImageAllowlist().root, other), other
    assert not allowed(ImageAllowlist().root, "debian:bookworm")


@pytest.mark.parametrize(
    "variant",
    [
        f"farm/rust:bookworm@{DIGEST}",  # the tag is cosmetic next to a digest
        f"farm/rust@{DIGEST}",
        "localhost/farm/rust:bookworm",  # another registry
        "localhost:5000/farm/rust:bookworm",
        "registry.test/farm/rust:bookworm",
        "docker.io/farm/rust",  # tag latest
        "farm/rust:bookworm2",
        "farm/rust:Bookworm",
        "farm/rust/x:bookworm",
        "farm/rusty:bookworm",
        "evil/farm/rust:bookworm",
        "farm/rust:bookworm ",
        "Farm/rust:bookworm",
    ],
)
def test_spellings_do_not_slip_past_an_exact_pattern(variant: str) -> None:
    problem = ImageAllowlist(["farm/rust:bookworm"]).check(variant)
    assert problem is not None and problem.startswith("image: ")


def test_a_tag_pattern_matches_tags_only_never_a_digest() -> None:
    patterns = ["farm/rust:*"]
    assert allowed(patterns, "farm/rust:bookworm")
    assert allowed(patterns, "docker.io/farm/rust:trixie")
    assert allowed(patterns, "farm/rust")  # :latest
    assert not allowed(patterns, f"farm/rust:bookworm@{DIGEST}")
    assert not allowed(patterns, "farm/rust/sub:bookworm")  # * stays inside one part
    assert not allowed(patterns, "localhost/farm/rust:bookworm")


def test_digest_pinning_allows_exactly_that_content() -> None:
    patterns = [f"farm/rust@{DIGEST}"]
    assert allowed(patterns, f"farm/rust@{DIGEST}")
    assert allowed(patterns, f"docker.io/farm/rust:anything@{DIGEST}")
    assert not allowed(patterns, f"farm/rust@{OTHER}")
    assert not allowed(patterns, "farm/rust:bookworm")  # a tag can move; the pin cannot
    assert not allowed(patterns, f"other/rust@{DIGEST}")
    # A pin written with a tag is the same pin.
    assert allowed([f"farm/rust:bookworm@{DIGEST}"], f"farm/rust@{DIGEST}")


def test_stars_stay_inside_their_part() -> None:
    assert allowed(["registry.test/team/*:*"], "registry.test/team/app:1")
    assert not allowed(["registry.test/team/*:*"], "registry.test/team/a/b:1")
    assert not allowed(["registry.test/team/*:*"], "registry.test.evil/team/app:1")
    assert allowed(["*.test/team/app:1"], "registry.test/team/app:1")
    assert not allowed(["*.test/team/app:1"], "registry.test:5000/team/app:1")
    # `*` alone is docker.io/library/*:latest, not "everything".
    assert allowed(["*"], "debian")
    assert not allowed(["*"], "farm/rust:bookworm")


@pytest.mark.parametrize("bad", ["Farm/*", "farm/rust:bookworm ", "", "farm/rust@sha256:*"])
def test_bad_patterns_are_refused_when_the_operator_configures_them(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed image pattern"):
        ImageAllowlist([bad])
    with pytest.raises(InputError, match="FARM_ALLOWED_IMAGES"):
        ImageAllowlist.of_settings(Settings(home=Path("/nonexistent"), allowed_images=(bad,)))


def test_the_host_list_comes_from_farm_allowed_images() -> None:
    env = {"FARM_HOME": "/nonexistent", "FARM_ALLOWED_IMAGES": " farm/rust:*, a.test/x:1\n"}
    assert Settings.from_env(env).allowed_images == ("farm/rust:*", "a.test/x:1")
    # By default, farm's own builder images, every suite (farm image build rust --suite).
    default = (DEFAULT_IMAGE, "farm/rust:trixie")
    assert Settings.from_env({"FARM_HOME": "/x"}).allowed_images == default
    assert Settings.from_env({"FARM_HOME": "/x", "FARM_ALLOWED_IMAGES": ""}).allowed_images == (
        default
    )


# --- ceilings ---------------------------------------------------------------------------


def test_the_default_ceilings_admit_the_default_spec(tmp_path: Path) -> None:
    assert Ceilings().check(spec(tmp_path)) == []
    assert Admission().check(spec(tmp_path)) == []


def test_each_field_above_its_ceiling_is_named_with_value_and_ceiling(tmp_path: Path) -> None:
    ceilings = Ceilings(
        cpus=2, memory="4g", pids=512, scratch="1g", timeout_seconds=600, max_file="1m"
    )
    ceilings = ceilings.model_copy(update={"max_total": 2 << 20, "max_files": 10, "log": 64 << 10})
    big = spec(
        tmp_path,
        resources={"cpus": 3, "memory": "5g", "pids": 513, "scratch": "2g"},
        limits={"max_file": "2m", "max_total": "3m", "max_files": 11, "log": "65k"},
        timeout_seconds=601,
    )
    assert ceilings.check(big) == [
        f"resources.{name}: {value} is above this installation's ceiling of {most}; "
        f"ask for at most {most}"
        for name, value, most in [
            ("cpus", "3.0", "2.0"),
            ("memory", "5g", "4g"),
            ("pids", "513", "512"),
            ("scratch", "2g", "1g"),
        ]
    ] + [
        f"{name}: {value} is above this installation's ceiling of {most}; ask for at most {most}"
        for name, value, most in [
            ("limits.max_file", "2m", "1m"),
            ("limits.max_total", "3m", "2m"),
            ("limits.max_files", "11", "10"),
            ("limits.log", "65k", "64k"),
            ("timeout_seconds", "601", "600"),
        ]
    ]
    # At the ceiling is admitted.
    at = spec(
        tmp_path,
        resources={"cpus": 2, "memory": "4g", "pids": 512, "scratch": "1g"},
        limits={"max_file": "1m", "max_total": "2m", "max_files": 10, "log": "64k"},
        timeout_seconds=600,
    )
    assert ceilings.check(at) == []


def test_the_disk_ceiling_bounds_resources_disk(tmp_path: Path) -> None:
    """The check walks the spec's own fields, so `disk` bounds resources.disk."""
    problems = Ceilings(disk=1).check(spec(tmp_path))
    assert len(problems) == 1 and problems[0].startswith("resources.disk: 10g is above")


def test_ceilings_from_the_command_line() -> None:
    got = Ceilings.parse_items(["memory=8g", "cpus=4", "log = 1m"], "--ceiling")
    assert (got.memory, got.cpus, got.log, got.pids) == (8 << 30, 4.0, 1 << 20, Ceilings().pids)
    for bad, words in [
        ("memory", "use NAME=VALUE"),
        ("memroy=8g", "memroy"),
        ("memory=lots", "not a size"),
        ("cpus=0", "greater than 0"),
    ]:
        with pytest.raises(InputError, match=words):
            Ceilings.parse_items([bad], "--ceiling")


def test_refusal_is_a_spec_error_with_problems_and_a_hint(tmp_path: Path) -> None:
    admission = Admission(ceilings=Ceilings(memory="4g"), allowed_images=ImageAllowlist())
    with pytest.raises(NotAdmittedError) as caught:
        admission.enforce(spec(tmp_path, image="debian", resources={"memory": "8g"}), "ask ops")
    exc = caught.value
    assert isinstance(exc, SpecError) and exc.exit_code == 2
    assert exc.problems[0].startswith("resources.memory: 8g is above")
    assert exc.problems[1].startswith("image: 'debian' (docker.io/library/debian:latest)")
    assert "allowed: farm/rust:bookworm" in exc.problems[1]
    assert str(exc).endswith("ask ops")


def test_sizes_are_shown_as_they_are_written() -> None:
    assert [format_size(n) for n in (16 << 30, 512 << 20, 1 << 40, 4096, 1000, 0)] == [
        "16g",
        "512m",
        "1t",
        "4k",
        "1000",
        "0",
    ]


def test_the_check_ceiling_bounds_the_runs_given_beside_the_spec(tmp_path: Path) -> None:
    """`farm serve`'s check option is not a spec field; each run is a whole build."""
    ceilings = Ceilings(check_runs=2)
    assert ceilings.check(spec(tmp_path), 2) == []
    (problem,) = ceilings.check(spec(tmp_path), 3)
    assert problem == "check: 3 runs is above this installation's ceiling of 2; ask for at most 2"

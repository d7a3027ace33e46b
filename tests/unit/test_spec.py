from pathlib import Path

import pytest

from farm.errors import SpecError
from farm.spec import build_spec, load_spec_file, parse_size


def test_defaults(tmp_path: Path) -> None:
    spec = build_spec({"source": str(tmp_path)})
    assert spec.source == tmp_path.resolve()
    assert spec.resources.pids == 512
    assert spec.tenant == "default"
    assert spec.env == {}


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        (["target/release/x", "../x"], "outputs[1]: '../x' escapes the output directory"),
        (["/etc/passwd"], "outputs[0]: '/etc/passwd' escapes the output directory"),
        (["out/../../x"], "outputs[0]: 'out/../../x' escapes the output directory"),
        (["src/main.rs"], "outputs[0]: 'src/main.rs' must start with out/ or target/"),
        (["out"], "outputs[0]: 'out' must start with out/ or target/"),
    ],
)
def test_outputs_are_confined(tmp_path: Path, outputs: list[str], expected: str) -> None:
    with pytest.raises(SpecError) as err:
        build_spec({"source": str(tmp_path), "outputs": outputs})
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(expected)


def test_every_bad_field_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        build_spec(
            {
                "source": str(tmp_path / "missing"),
                "env": {"PATH": "/evil", "1BAD": "x"},
                "resources": {"memory": "lots", "pids": 10},
                "timeout_seconds": 0,
                "tenant": "Team A",
                "colour": "blue",
            }
        )
    text = "\n".join(err.value.problems)
    assert "source: " in text and "is not a directory" in text
    assert "env: 'PATH' is set by farm's sandbox policy" not in text  # names come first
    assert "env: " in text
    assert "resources.memory: 'lots' is not a size" in text
    assert "resources.pids: " in text
    assert "timeout_seconds: " in text
    assert "tenant: 'Team A'" in text
    assert "colour: unknown field" in text


def test_reserved_env_rejected(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        build_spec({"source": str(tmp_path), "env": {"LD_PRELOAD": "/x.so"}})
    assert err.value.problems == ["env: LD_PRELOAD is set by farm's sandbox policy; remove it"]


@pytest.mark.parametrize(("text", "size"), [("512m", 512 << 20), ("2GiB", 2 << 30), (4096, 4096)])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_spec_file_relative_source(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    spec_file = tmp_path / "build.toml"
    spec_file.write_text('source = "proj"\nargv = ["make"]\n[resources]\nmemory = "1g"\n')
    spec = build_spec(load_spec_file(spec_file))
    assert spec.source == (tmp_path / "proj").resolve()
    assert spec.resources.memory == 1 << 30


def test_unparseable_spec_file(tmp_path: Path) -> None:
    bad = tmp_path / "b.json"
    bad.write_text("{nope")
    with pytest.raises(SpecError, match="spec file"):
        load_spec_file(bad)

"""bench/png.py and bench/chart.py: the ratios chart is a valid PNG drawn from the JSON."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from pngcanvas import Canvas  # noqa: E402


def chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        found[kind] = body
        at += 12 + length
    return found


def pixel(data: bytes, x: int, y: int) -> tuple[int, int, int]:
    c = chunks(data)
    width, _height = struct.unpack(">II", c[b"IHDR"][:8])
    raw = zlib.decompress(c[b"IDAT"])
    row = raw[y * (1 + 3 * width) + 1 :]
    return tuple(row[3 * x : 3 * x + 3])


def test_canvas_writes_a_decodable_png_with_its_pixels() -> None:
    canvas = Canvas(20, 10)
    canvas.rect(5, 2, 3, 4, (10, 20, 30))
    data = canvas.png()
    c = chunks(data)
    assert struct.unpack(">IIBB", c[b"IHDR"][:10]) == (20, 10, 8, 2)
    assert len(zlib.decompress(c[b"IDAT"])) == 10 * (1 + 3 * 20)
    assert pixel(data, 6, 3) == (10, 20, 30)
    assert pixel(data, 0, 0) == (255, 255, 255)


def test_text_draws_glyph_pixels() -> None:
    canvas = Canvas(40, 20)
    end = canvas.text(0, 0, "1.5", scale=1)
    assert end == 18
    assert pixel(canvas.png(), 2, 0) == (0, 0, 0)  # the top of the "1"


def test_chart_from_results(tmp_path: Path) -> None:
    levers = {"runs": {"runc": [{"seconds": 30.0}], "ptrace": [{"seconds": 60.0}]}}
    (tmp_path / "levers.json").write_text(json.dumps(levers))
    out = tmp_path / "chart.png"
    argv = [sys.executable, str(BENCH / "chart.py"), "--data", str(tmp_path), "--out", str(out)]
    subprocess.run(argv, check=True, capture_output=True)
    assert b"IEND" in chunks(out.read_bytes())


def test_chart_without_results_says_what_to_run(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH / "chart.py"), "--data", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode != 0
    assert "make bench" in done.stderr


@pytest.mark.parametrize("ratio", [0.5, 5.0])
def test_bars_stay_inside_the_canvas(tmp_path: Path, ratio: float) -> None:
    levers = {"runs": {"runc": [{"seconds": 10.0}], "x": [{"seconds": 10.0 * ratio}]}}
    (tmp_path / "levers.json").write_text(json.dumps(levers))
    argv = [
        sys.executable,
        str(BENCH / "chart.py"),
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "c.png"),
    ]
    subprocess.run(argv, check=True, capture_output=True)

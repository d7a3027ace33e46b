"""The ratios chart of docs/performance.md, drawn from the benchmarks' JSON.

    python bench/chart.py [--data DIR] [--out docs/performance.png]

Reads what `make bench` leaves in DIR (default docs/performance-data): run.json
(bench/run.py), levers*.json (bench/levers.py, a section each), starts.json
(bench/starts.py), layers.json (bench/layers.py), realworld*.json (bench/realworld.py);
a missing file leaves its section out. Draws one horizontal bar
per ratio against runc (or, for the cache hit, against a cold build), with a line at
1.0. Pure Python (bench/pngcanvas.py): no plotting dependency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pngcanvas import Canvas, text_width

ROOT = Path(__file__).resolve().parent.parent
Section = tuple[str, list[tuple[str, float]]]
BAR, GAP, LEFT, SCALE_W, MAX_RATIO = 22, 8, 330, 560, 3.0
#: A load average above this (2 cores, the build itself keeps about 2) marks a section loaded.
LOADED = 4.0
COLOURS = {"base": (150, 150, 150), "bar": (60, 110, 190), "line": (200, 40, 40)}


def levers(data: dict) -> Section:
    runs = data["runs"]
    base = statistics.median(r["seconds"] for r in runs["runc"])
    argv = data.get("argv", [])
    what = f"-p {argv[argv.index('-p') + 1]}" if "-p" in argv else "hello-serde"
    bars = [
        (
            f"runsc {n}" if n != "runc" else "runc",
            statistics.median(r["seconds"] for r in rs) / base,
        )
        for n, rs in runs.items()
    ]
    return f"cold build ({what}) / runc, medians", bars


def starts(data: dict) -> Section:
    st = data["start_teardown"]
    base = st["runc"]["stats"]["p50"]
    bars = [(rt, r["stats"]["p50"] / base) for rt, r in st.items()]
    if data.get("hit_source", "hello-serde") == "hello-serde":  # else the cold build is `head`
        hit = data["cache_hit_cli"]["stats"]["p50"] / data["cold_cli_build"]["seconds"]
        bars.append(("cache hit CLI / cold", hit))
    return "start + teardown p50 / runc", bars


def dockerd_cold(data: dict) -> Section:
    """bench/run.py: farm's own Runner through dockerd, the shipped runtimes."""
    cargo = data["cargo"]
    base = statistics.median(cargo["runc"])
    return "cold build through farm / runc, medians", [
        (rt, statistics.median(runs) / base) for rt, runs in cargo.items()
    ]


def layers(data: dict) -> Section:
    """bench/layers.py: the one-line-change rebuild against runc with a warm target/."""
    times = data.get("times", data)
    base = statistics.median(times["runc-warm"])
    return "rebuild after a one-line change / runc warm", [
        (name, statistics.median(runs) / base) for name, runs in times.items()
    ]


def realworld(rows: list[dict]) -> Section:
    bars = [(r["program"], r["gVisor (runsc)"]["build"] / r["runc"]["build"]) for r in rows]
    loads = [
        float(side[key].split()[0])
        for r in rows
        for side in (r["gVisor (runsc)"], r["runc"])
        for key in ("loadavg_before", "loadavg_after")
        if key in side
    ]
    # A build's load is recorded since the corpus runs were timed on a shared machine.
    loaded = " (loaded machine)" if not loads or max(loads) > LOADED else ""
    return f"realworld cold build, gvisor / runc{loaded}", bars


#: File name patterns in DIR and how each is read; several levers*.json give a section each.
READERS = {
    "run.json": dockerd_cold,
    "levers*.json": levers,
    "starts.json": starts,
    "layers.json": layers,
    "realworld*.json": realworld,
}


def draw(sections: list[Section], title: str) -> Canvas:
    rows = sum(len(bars) + 2 for _, bars in sections)
    canvas = Canvas(LEFT + SCALE_W + 120, 60 + rows * (BAR + GAP))
    canvas.text(10, 10, title, scale=2)
    y = 50
    for heading, bars in sections:
        canvas.text(10, y, heading, (40, 40, 40), scale=2)
        y += BAR + GAP
        one = LEFT + int(SCALE_W / MAX_RATIO)
        canvas.rect(one, y - 4, 2, len(bars) * (BAR + GAP), COLOURS["line"])
        for label, ratio in bars:
            canvas.text(LEFT - text_width(label) - 10, y + 4, label, scale=2)
            width = int(SCALE_W * min(ratio, MAX_RATIO) / MAX_RATIO)
            colour = COLOURS["base"] if label in ("runc", "runc-warm") else COLOURS["bar"]
            canvas.rect(LEFT, y, max(width, 1), BAR, colour)
            canvas.text(LEFT + width + 6, y + 4, f"{ratio:.2f}", scale=2)
            y += BAR + GAP
        y += BAR + GAP
    return canvas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "docs" / "performance-data")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.png")
    parser.add_argument("--title", default="farm: gvisor against runc (2-core machine)")
    args = parser.parse_args()
    sections = [
        reader(json.loads(path.read_text()))
        for pattern, reader in READERS.items()
        for path in sorted(args.data.glob(pattern))
    ]
    if not sections:
        raise SystemExit(f"no benchmark results in {args.data}: run `make bench` first")
    draw(sections, args.title).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

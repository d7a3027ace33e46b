"""A cache lookup keys on the image's current id, asked of the backend through the
``Backend`` protocol's ``image_id`` (not found by duck typing): a tag moved to another
image misses. Real runner, store, cache and provenance; the backend runs nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from farm.buildflow import look_up, run_build
from farm.runner import Runner
from farm.sandbox import Backend, SandboxResult
from farm.settings import Settings
from farm.spec import build_spec
from farm.store import Store


class TaggedBackend:
    """The image's tag names ``current``; run() succeeds without running anything."""

    name = "fake"

    def __init__(self) -> None:
        self.current = "sha256:" + "a" * 64

    def preflight(self, spec: object) -> str:
        return self.current

    def image_id(self, image: str) -> str:
        return self.current

    def run(self, spec: object, **_: object) -> SandboxResult:
        now = datetime.now(UTC)
        return SandboxResult(
            container_id="c1", runtime="fake", exit_code=0, started_at=now, finished_at=now
        )

    def list_sandboxes(self) -> dict[str, str]:
        return {}

    def teardown(self, sandbox_id: str) -> list[str]:
        return []


def test_the_backend_protocol_offers_image_id() -> None:
    assert callable(getattr(Backend, "image_id", None))


def test_a_tag_moved_to_another_image_misses(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.rs").write_text("fn main() {}\n")
    settings = Settings(home=tmp_path / "home", observe=False)
    store, backend = Store(settings.home), TaggedBackend()
    runner = Runner(settings, backend, store)
    spec = build_spec({"source": str(src), "argv": ["true"]})
    built = run_build(runner, spec)
    assert not built.cached
    assert look_up(settings, store, backend, spec).hit is not None  # same image: a hit
    backend.current = "sha256:" + "b" * 64  # the tag now names another image
    assert look_up(settings, store, backend, spec).hit is None

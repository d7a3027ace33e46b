"""cargo's missing-package error, as the issue's user saw it, becomes farm's advice."""

from __future__ import annotations

from farm.ecosystems.cargo.hints import missing_crate_hint

# ripgrep 13.0.0 on farm/rust:bookworm without a fetch phase (issue 12's report).
RIPGREP = [
    "error: no matching package named `bstr` found",
    "location searched: registry `crates-io`",
    "required by package `grep-cli v0.1.6 (/src/crates/cli)`",
]


def test_the_missing_crate_is_named_with_the_fix() -> None:
    hint = missing_crate_hint(RIPGREP)
    assert hint is not None and "no crate bstr" in hint and "--registry" in hint


def test_other_failures_get_no_hint() -> None:
    assert missing_crate_hint(["error[E0425]: cannot find value `x` in this scope"]) is None

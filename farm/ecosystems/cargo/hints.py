"""What to do when cargo, inside the sandbox, could not find a locked crate.

Callers: ``farm.runner`` after a failed build that had no fetch phase. Without
``--registry`` the build sees only the crates its image carries (farm's builder images
have a few of Debian's as a directory source), so a real project's lock usually names
crates that are not there, and cargo says ``no matching package named `bstr` found``
with no word about farm. This turns that into the fix.
"""

from __future__ import annotations

import re

_MISSING = re.compile(r"no matching package (?:named|found)\D*?`([A-Za-z0-9_-]+)`")


def missing_crate_hint(log_tail: list[str]) -> str | None:
    """The note for a build whose log ends with cargo's missing-package error, or None."""
    for line in log_tail:
        match = _MISSING.search(line)
        if match:
            return (
                f"cargo found no crate {match[1]} in the image: this build had no fetch "
                "phase, so it saw only the crates the image carries. Run it with "
                "--registry sparse+https://index.crates.io/ (or your mirror's URL, "
                "docs/mirror.md; or a registry name your operator configured) to download "
                "and verify Cargo.lock's crates first (README, 'Real projects')"
            )
    return None

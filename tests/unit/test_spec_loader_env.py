"""Under gVisor the sandbox's pid 1 (coreutils `timeout`, then `setpriv`) runs as root
with CAP_KILL/SETUID/SETGID/SETPCAP and inherits the spec's environment. glibc honours
its loader and locale variables in a process that did not gain privilege by exec, so
`LD_AUDIT=/src/x.so` ran the tenant's library as root pid 1 (reproduced in the real
sandbox). A spec may therefore set none of the variables glibc strips from privileged
programs (sysdeps/generic/unsecvars.h), nor any other LD_* name."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.errors import SpecError
from farm.spec import build_spec

# glibc's UNSECURE_ENVVARS (2.36+), plus LD_* spellings glibc may add later.
LOADER_ENV = [
    "LD_AUDIT",
    "LD_DEBUG",
    "LD_DEBUG_OUTPUT",
    "LD_DYNAMIC_WEAK",
    "LD_HWCAP_MASK",
    "LD_LIBRARY_PATH",
    "LD_ORIGIN_PATH",
    "LD_PRELOAD",
    "LD_PROFILE",
    "LD_SHOW_AUXV",
    "LD_USE_LOAD_BIAS",
    "LD_BIND_NOT",
    "LD_ANYTHING_NEW",
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TZDIR",
]


@pytest.mark.parametrize("name", LOADER_ENV)
def test_a_spec_cannot_hand_pid_1_a_loader_variable(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError) as err:
        build_spec({"source": str(tmp_path), "env": {name: "/src/audit.so"}})
    assert name in err.value.problems[0] and "remove it" in err.value.problems[0]


def test_ordinary_variables_still_pass(tmp_path: Path) -> None:
    spec = build_spec({"source": str(tmp_path), "env": {"RUSTFLAGS": "-C opt-level=2"}})
    assert spec.env == {"RUSTFLAGS": "-C opt-level=2"}

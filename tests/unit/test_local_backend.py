"""The local backend's translation of a SandboxSpec into Docker's create arguments."""

from pathlib import Path

from farm.backends.local import BACKSTOP_GRACE_SECONDS, LocalBackend
from farm.policy import BuildDirs, sandbox_for
from farm.runner import resolve
from farm.settings import Settings
from farm.spec import build_spec


def test_docker_arguments_carry_the_whole_policy(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    spec = resolve(
        build_spec(
            {
                "source": str(tmp_path),
                "argv": ["make"],
                "resources": {"cpus": 1.5, "memory": "1g", "pids": 300, "scratch": "64m"},
            }
        )
    )
    sandbox = sandbox_for(spec, "b1", BuildDirs(tmp_path / "b1"), settings)
    args = LocalBackend(settings, client=object())._create_args(sandbox)  # type: ignore[arg-type]
    assert args["runtime"] == "runsc-observed"  # observation is on by default
    assert args["network_mode"] == "none" and args["read_only"] is True
    assert args["cap_drop"] == ["ALL"] and args["security_opt"] == ["no-new-privileges"]
    # pid 1 is the deadline backstop, root inside gVisor with only what it needs; the
    # build's argv is its child, dropped to 10001 with no capabilities at all.
    deadline = spec.timeout_seconds + BACKSTOP_GRACE_SECONDS
    assert args["user"] == "0:0" and args["cap_add"] == ["KILL", "SETUID", "SETGID", "SETPCAP"]
    assert args["entrypoint"] == [
        *("timeout", "-s", "KILL", str(deadline)),
        *("setpriv", "--reuid=10001", "--regid=10001", "--clear-groups"),
        *("--inh-caps=-all", "--bounding-set=-all", "--"),
    ]
    assert args["command"] == ["make"]
    assert args["nano_cpus"] == 1_500_000_000
    assert args["mem_limit"] == args["memswap_limit"] == 1 << 30
    assert args["pids_limit"] == 300
    assert args["tmpfs"] == {"/tmp": f"size={64 << 20},mode=1777,nosuid,nodev"}
    binds = {(m["Target"], m["Source"], m["ReadOnly"]) for m in args["mounts"]}
    assert binds == {
        ("/src", str(tmp_path / "b1" / "src"), True),
        ("/build/target", str(tmp_path / "b1" / "disk" / "target"), False),
        ("/out", str(tmp_path / "b1" / "disk" / "out"), False),
    }
    assert "privileged" not in args and "volumes" not in args
    assert args["log_config"]["Config"]["max-size"] == str(spec.limits.log)
    # runc: root would be the host's; the host kernel protects init instead.
    runc = Settings(home=tmp_path / "home", insecure_runtime="runc")
    args = LocalBackend(runc, client=object())._create_args(sandbox)  # type: ignore[arg-type]
    assert args["user"] == "10001:10001" and "cap_add" not in args
    assert args["entrypoint"] == ["timeout", "-s", "KILL", str(deadline)]
    assert args["command"] == ["make"]


def test_insecure_runtime_is_only_used_when_asked(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, insecure_runtime="runc")
    assert settings.effective_runtime == "runc" and not settings.observing
    assert Settings(home=tmp_path).effective_runtime == "runsc-observed"
    assert Settings(home=tmp_path, observe=False).effective_runtime == "runsc"

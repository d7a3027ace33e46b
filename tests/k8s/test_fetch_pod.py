"""The cluster's fetch pod runs farm's own fetch phase (``farm fetch``), never cargo.

``cargo vendor`` would read the fetched repository's ``.cargo/config.toml`` (source
replacement, registries, ``[net]``, credential providers, ``target.*.runner``): tenant
configuration, in a pod with egress. So the pod runs git (init container ``checkout``)
and then ``farm fetch`` from the operator's registry, which a Build may only name.
Objects are read as the controller makes them; the command is parsed with farm's own
CLI parser, so a flag it does not know fails here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from farm import cli
from farm.errors import SpecError
from farm.k8s import objects
from farm.k8s.config import ClusterRegistry, ControllerConfig
from farm.k8s.objects import BuildRef
from farm.k8s.resource import cluster_spec
from farm.settings import Settings
from tests.k8s.conftest import NS, RUN_NS, Cluster
from tests.k8s.kubelet import build_manifest, job
from tests.k8s.test_admission import refused_with

REF = BuildRef("team-a", "app", "uid-1")
SOURCE = {"git": "https://git.test/a.git", "revision": "a" * 40, "subdir": "app"}
MIRROR = ClusterRegistry(name="mirror", index="sparse+https://crates.mirror.test/index/")
PRIVATE = ClusterRegistry(
    name="private", index="sparse+https://cargo.corp.test/api/", token_secret="corp-cargo-token"
)
CONFIG = ControllerConfig(registries=[MIRROR, PRIVATE], git_hosts=["git.corp.test"])


def fetch_pod(config: ControllerConfig = CONFIG, **spec: Any) -> dict[str, Any]:
    parsed = cluster_spec({"source": SOURCE, **spec})
    sandbox = objects.sandbox_spec(REF, parsed)
    return objects.fetch_job(REF, parsed, sandbox, config)["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in [*pod.get("initContainers", []), *pod["containers"]]}


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_fetch_container_runs_farm_fetch_and_no_cargo() -> None:
    pod = fetch_pod()
    fetch = containers(pod)["fetch"]
    command = fetch["command"]
    assert command[0] == "farm"
    args = cli._parser().parse_args(command[1:])  # exits on a flag farm does not know
    assert args.func is cli.cmd_fetch
    assert args.path == "/work/repo/app"
    assert str(args.dest) == f"{objects.WORK_DIR}/{objects.DEPS_DIR}"
    assert str(args.within) == f"{objects.WORK_DIR}/repo"  # a subdir link stays inside
    # The crate cache is on the sources volume, not the pod's 1 GiB /tmp.
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    assert env["FARM_HOME"] == f"{objects.WORK_DIR}/farm-home"
    assert args.registry == "mirror" and args.always_vendor
    assert args.git_host == ["git.corp.test"]
    # cargo appears nowhere in the pod: not in a command, an argument or a script.
    for container in containers(pod).values():
        words = " ".join([*container["command"], *container.get("args", [])])
        assert "cargo" not in words, container["name"]


def test_git_only_checks_out_the_commit_in_the_init_container() -> None:
    pod = fetch_pod(config=CONFIG.model_copy(update={"fetch_env": {"GIT_X": "1"}}))
    checkout = containers(pod)["checkout"]
    assert [c["name"] for c in pod["initContainers"]] == ["checkout"]
    script = checkout["command"][-1]
    assert 'git fetch -q --depth 1 "$FARM_GIT_URL" "$FARM_GIT_REVISION"' in script
    assert 'test "$(git rev-parse HEAD)" = "$FARM_GIT_REVISION"' in script
    assert env(checkout)["FARM_GIT_REVISION"] == "a" * 40 and env(checkout)["GIT_X"] == "1"
    # The site's git settings are for the checkout; farm fetch's git gets none of them.
    assert "GIT_X" not in env(containers(pod)["fetch"])


def test_the_pod_gets_the_named_registry_and_its_token_only_as_a_mounted_secret() -> None:
    pod = fetch_pod(registry="private")
    fetch = containers(pod)["fetch"]
    settings = Settings.from_env(env(fetch))  # exactly as farm fetch reads it in the pod
    token_file = f"{objects.REGISTRY_TOKEN_DIR}/token"
    assert list(settings.registries) == ["private"]
    chosen = settings.registries["private"]
    assert (chosen.index, str(chosen.token_file)) == (PRIVATE.index, token_file)
    mount = next(m for m in fetch["volumeMounts"] if m["mountPath"] == objects.REGISTRY_TOKEN_DIR)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "corp-cargo-token"
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    # Only the fetch container sees it; the tenant-driven checkout does not.
    checkout = containers(pod)["checkout"]
    assert all(m["name"] != mount["name"] for m in checkout["volumeMounts"])
    assert "corp-cargo-token" not in json.dumps([fetch["env"], fetch["command"]])


def test_a_build_naming_no_registry_gets_the_first_and_no_token_volume() -> None:
    pod = fetch_pod()
    fetch = containers(pod)["fetch"]
    registries = json.loads(env(fetch)["FARM_REGISTRIES_JSON"])
    assert registries == [{"name": "mirror", "index": MIRROR.index}]
    assert all("secret" not in v for v in pod["volumes"])
    default = fetch_pod(config=ControllerConfig())
    assert json.loads(env(containers(default)["fetch"])["FARM_REGISTRIES_JSON"]) == [
        {"name": "crates-io", "index": "sparse+https://index.crates.io/"}
    ]


def test_the_build_mounts_what_farm_fetch_writes() -> None:
    """farm fetch writes DEST/vendor and DEST/cargo-config.toml (farm.ecosystems.cargo)."""
    spec = cluster_spec({"source": SOURCE})
    sandbox = objects.sandbox_spec(REF, spec)
    build = objects.build_job(REF, spec, sandbox, CONFIG, artifact_url="http://10.0.0.1:8443")
    mounts = {
        m["mountPath"]: m["subPath"]
        for m in build["spec"]["template"]["spec"]["initContainers"][0]["volumeMounts"]
        if "subPath" in m
    }
    assert mounts[objects.VENDOR_DIR] == f"{objects.DEPS_DIR}/vendor"
    assert mounts[objects.VENDOR_CONFIG] == f"{objects.DEPS_DIR}/cargo-config.toml"


@pytest.mark.parametrize(
    "registry",
    [
        "sparse+https://evil.test/index/",
        "https://10.0.0.1/",
        "10.0.0.1",
        "../mirror",
    ],
)
def test_a_spec_cannot_give_a_registry_url(registry: str) -> None:
    with pytest.raises(SpecError, match="registry"):
        cluster_spec({"source": SOURCE, "registry": registry})


def test_an_unknown_registry_is_a_spec_error_naming_the_registries() -> None:
    with pytest.raises(SpecError, match=r"'elsewhere' is not one of .*\(mirror, private\)"):
        fetch_pod(registry="elsewhere")


def test_the_controller_runs_a_build_naming_one_of_its_registries(cluster: Cluster) -> None:
    cluster.controller("a", CONFIG)
    build = cluster.api.create("builds", NS, build_manifest("named", registry="private"))
    pod = job(cluster.api, RUN_NS, build, "fetch")["spec"]["template"]["spec"]
    fetch = containers(pod)["fetch"]
    assert fetch["command"][fetch["command"].index("--registry") + 1] == "private"
    assert json.loads(env(fetch)["FARM_REGISTRIES_JSON"])[0]["index"] == PRIVATE.index
    cluster.wait_phase("named", "Fetching")


@pytest.mark.parametrize("registry", ["elsewhere", "http://127.0.0.1:9/index/"])
def test_the_controller_refuses_a_bad_registry_before_creating_anything(
    cluster: Cluster, registry: str
) -> None:
    cluster.controller("a", CONFIG)
    cluster.api.create("builds", NS, build_manifest("reg", registry=registry))
    failed = refused_with(cluster, "reg", "InvalidSpec")
    assert "registry" in failed["status"]["message"]


def test_the_controller_config_refuses_bad_registries_and_git_hosts() -> None:
    with pytest.raises(ValidationError, match="not a sparse index URL"):
        ControllerConfig.model_validate({"registries": [{"index": "https://x.test/"}]})
    with pytest.raises(ValidationError, match="named twice"):
        ControllerConfig(registries=[MIRROR, MIRROR])
    with pytest.raises(ValidationError, match="at least 1"):
        ControllerConfig(registries=[])
    with pytest.raises(ValidationError, match="give a host name"):
        ControllerConfig(git_hosts=["git.test/path"])
    with pytest.raises(ValidationError, match="token_secret"):
        ControllerConfig.model_validate({"registries": [{"token_secret": "../other"}]})

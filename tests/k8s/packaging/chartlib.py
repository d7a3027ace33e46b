"""Shared by the packaging tests (test_chart, test_manifests, test_prometheus): the chart
rendered with each values file as fixtures (import them into a test module), and the
schema validators for every object it renders. Tools come from `make tools`."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate

from farm.devtools import NODE_MODULES
from tests.k8s.versions import K8S_VERSION

HERE = Path(__file__).resolve().parent
VALUES = {
    "default": [],
    "nondefault": [HERE / "values-nondefault.yaml"],
    "minimal": [HERE / "values-minimal.yaml"],
}
MONITORING = "monitoring.coreos.com/v1"
MODELS = "@kubernetes-models/prometheus-operator"
TSC_FLAGS = ("--noEmit", "--strict", "--module", "nodenext", "--skipLibCheck")

Obj = dict[str, Any]


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def validate_builtin(obj: Obj) -> None:
    """kubernetes-validate --strict against tests/k8s/versions.py's version (the chart's
    kubeVersion is >=1.28): raises ValidationError (unknown fields included)."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def validate_monitoring(objects: list[Obj]) -> dict[str, list[str]]:
    """Errors per ``Kind/name`` from prometheus-operator's API schemas (node)."""
    done = subprocess.run(
        ["node", str(HERE / "validate_monitoring.mjs"), str(NODE_MODULES)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=True,
    )
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(objects), done.stderr
    return {f"{r['kind']}/{r['name']}": r["errors"] for r in results}


def typecheck_monitoring(objects: list[Obj]) -> dict[str, list[str]]:
    """Errors per ``Kind/name`` from compiling each object, as a TypeScript literal, against
    prometheus-operator's ``I<Kind>`` interface. Excess-property checks make this reject
    unknown fields (a typo the API server would silently prune), which the JSON-schema
    validators accept. One object per line, so tsc's line number names the object."""
    keys = [f"{o['kind']}/{o['metadata']['name']}" for o in objects]
    lines = [
        f'import type {{ I{kind} as T{i} }} from "{MODELS}/{MONITORING}/{kind}";'
        for i, kind in enumerate(o["kind"] for o in objects)
    ]
    first = len(lines) + 1
    lines += [f"export const o{i}: T{i} = {json.dumps(o)};" for i, o in enumerate(objects)]
    # Under NODE_MODULES' parent, so tsc resolves the packages as node would.
    with tempfile.TemporaryDirectory(dir=NODE_MODULES.parent) as work:
        source = Path(work) / "objects.ts"
        source.write_text("\n".join(lines) + "\n")
        done = subprocess.run(
            ["node", str(NODE_MODULES / "typescript/bin/tsc"), *TSC_FLAGS, str(source)],
            capture_output=True,
            text=True,
        )
    errors: dict[str, list[str]] = {key: [] for key in keys}
    for line in done.stdout.splitlines():
        found = re.match(r".*objects\.ts\((\d+),\d+\): error (.*)", line)
        if found is None:  # an indented elaboration of the error above
            assert line.startswith(" ") and any(errors.values()), done.stdout + done.stderr
            continue
        assert int(found[1]) >= first, done.stdout  # an import failed: the pin is wrong
        errors[keys[int(found[1]) - first]].append(found[2])
    assert (done.returncode == 0) == (not any(errors.values())), done.stdout + done.stderr
    return errors


def validate_all(objects: list[Obj]) -> dict[str, str]:
    """Every object through the validator for its API group; returns failures by object."""
    failures: dict[str, str] = {}
    monitoring = [o for o in objects if o["apiVersion"] == MONITORING]
    typed = typecheck_monitoring(monitoring)
    for key, errors in validate_monitoring(monitoring).items():
        if errors + typed[key]:
            failures[key] = "; ".join(errors + typed[key])
    for obj in objects:
        if obj["apiVersion"] == MONITORING:
            continue
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            validate_builtin(obj)
        except kubernetes_validate.ValidationError as exc:
            failures[key] = f"{exc.message} at {list(exc.path)}"
        except kubernetes_validate.SchemaNotFoundError:
            failures[key] = f"no schema for {obj['apiVersion']} {obj['kind']}"
    return failures

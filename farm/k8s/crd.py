"""Generate the ``Build`` CustomResourceDefinition from the pydantic models.

Callers: ``farm controller crd`` prints it; ``manifests/crd/builds.farm.dev.yaml`` is its
committed output (a test keeps the two equal). The schema is *derived* from
``ClusterBuildSpec``/``BuildStatus``, so the API server and the controller agree on
every field, bound and enum. Pydantic's JSON Schema is turned into a Kubernetes
structural schema: ``$ref`` inlined, ``null`` unions become ``nullable``, ``title`` and
``additionalProperties: false`` dropped (the API server prunes unknown fields instead),
draft-2020 ``exclusiveMinimum`` rewritten to OpenAPI 3.0's boolean form, and sizes that
accept ``2g`` marked ``x-kubernetes-int-or-string`` with their checks on the node.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from farm.k8s import names
from farm.k8s.resource import BuildStatus, ClusterBuildSpec
from farm.spec import parse_size

#: Fields of the structural schema that mean something to Kubernetes; others are dropped.
_KEEP = {
    "type",
    "format",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "pattern",
    "nullable",
}
SIZE_PATTERN = r"^\s*\d+\s*[kmgtKMGT]?([iI]?[bB])?\s*$"
#: The only anyOf a structural schema allows beside x-kubernetes-int-or-string.
INT_OR_STRING = ({"type": "integer"}, {"type": "string"})

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Succeeded")].reason',
    },
    {"name": "Blocked", "type": "integer", "jsonPath": ".status.blocked"},
    {"name": "Reproducible", "type": "boolean", "jsonPath": ".status.reproducible"},
    # A 64-hex digest makes every line too wide: shown with `kubectl get -o wide`.
    {"name": "Digest", "type": "string", "jsonPath": ".status.digest", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
#: `kubectl get fbuild`; `build` alone would clash with other projects' kinds.
SHORT_NAMES = ["fbuild"]

#: Conditions are a map keyed by type, as in every built-in kind: server-side apply and
#: strategic merges then update one condition instead of replacing the list.
CONDITIONS_LIST_MAP = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


#: The provenance the controller signs names the spec in the record: a spec edited while
#: the build ran would make it describe something that did not run, so the API server
#: refuses any change (delete and re-create the Build instead).
IMMUTABLE = {
    "rule": "self == oldSelf",
    "message": "spec is immutable: delete the Build and create a new one",
}


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` (validation mode)."""
    raw = model.model_json_schema(mode="validation")
    return _convert(raw, raw.get("$defs", {}), _size_fields(model))


def _size_fields(model: type[BaseModel]) -> set[str]:
    """Names of fields (in any nested model) whose validator is ``parse_size``."""
    found: set[str] = set()
    for name, info in model.model_fields.items():
        if any(getattr(m, "func", None) is parse_size for m in info.metadata):
            found.add(name)
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found |= _size_fields(sub)
    return found


def _convert(node: dict[str, Any], defs: dict[str, Any], sizes: set[str]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return _convert({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs, sizes)
    if "anyOf" in node:
        return _nullable(node, defs, sizes)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {n: _property(n, s, defs, sizes) for n, s in value.items()}
        elif key in ("items", "additionalProperties"):
            if isinstance(value, dict):  # `additionalProperties: false` is dropped
                out[key] = _convert(value, defs, sizes)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "description":
            out[key] = " ".join(str(value).split())
        else:
            out[key] = value
    return out


def _property(name: str, node: dict[str, Any], defs: dict, sizes: set[str]) -> dict[str, Any]:
    schema = _convert(node, defs, sizes)
    if name in sizes:
        # The API server accepts anyOf under int-or-string only in exactly this form
        # (apiextensions' isIntOrStringAnyOfPattern); a branch with anything more is a
        # value validation, where `type` is forbidden, and the CRD is refused as not
        # structural. So the checks sit on the node, as controller-gen does for
        # Quantity: minimum and maximum apply to integers only, pattern to strings only.
        schema.pop("type", None)
        schema["x-kubernetes-int-or-string"] = True
        # Fresh dicts: a node shared between fields would be dumped as a YAML alias.
        schema["anyOf"] = [dict(branch) for branch in INT_OR_STRING]
        schema["pattern"] = SIZE_PATTERN
    return schema


def _nullable(node: dict[str, Any], defs: dict, sizes: set[str]) -> dict[str, Any]:
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    if len(options) != 1:
        raise ValueError(f"cannot express {node} in a structural schema")
    merged = _convert(
        {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}, defs, sizes
    )
    if len(options) < len(node["anyOf"]):
        merged["nullable"] = True
    return merged


def _status_schema() -> dict[str, Any]:
    status = structural(BuildStatus)
    status["properties"]["conditions"].update(CONDITIONS_LIST_MAP)
    return status


def crd() -> dict[str, Any]:
    """The complete CustomResourceDefinition of ``Build``."""
    schema = {
        "type": "object",
        "description": "A sandboxed build: fetched with mirror-only egress, built in gVisor "
        "with no network, torn down when done.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {**structural(ClusterBuildSpec), "x-kubernetes-validations": [IMMUTABLE]},
            "status": _status_schema(),
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": names.CRD_NAME, "labels": {"app.kubernetes.io/name": "farm"}},
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names.KIND,
                "plural": names.PLURAL,
                "singular": names.SINGULAR,
                "listKind": f"{names.KIND}List",
                "shortNames": SHORT_NAMES,
                "categories": ["farm"],
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }

"""JSON Schemas of both kinds for kubeconform, generated from the CRDs (so from the models).

kubeconform validates CRD-defined kinds against a schema location template; the
one the community catalog uses is `{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json`,
so the files are `schemas/beatkeeper.dev/scheduledtask_v1alpha1.json` and
`schemas/beatkeeper.dev/workerpool_v1alpha1.json`:

    kubeconform -strict -schema-location default \
      -schema-location 'schemas/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json' \
      manifests/

Each is the CRD's openAPIV3Schema as JSON Schema (draft 4 keywords, which
kubeconform reads), with `apiVersion` and `kind` pinned, unknown fields refused
(`additionalProperties: false`) where the apiserver would prune them, and
`x-kubernetes-*` extensions dropped. CEL rules (`x-kubernetes-validations`) have
no JSON Schema form: `beatkeeper validate` checks those, and everything the
webhook checks.

    python -m beatkeeper.api.jsonschema --write schemas     # regenerate
    python -m beatkeeper.api.jsonschema --check schemas     # fail on drift
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from beatkeeper.api import generated
from beatkeeper.api.base import GROUP, VERSION
from beatkeeper.api.crd import all_crds

_PRESERVE = "x-kubernetes-preserve-unknown-fields"


def _convert(node: Any) -> Any:
    """The structural schema as plain JSON Schema."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: _convert(child) for name, child in value.items()}
        else:
            out[key] = _convert(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["oneOf"] = [{"type": "integer"}, {"type": "string"}]
    # The apiserver prunes (and kubectl --validate=strict refuses) unknown fields of
    # an object with properties, unless it preserves them: say so to kubeconform.
    if "properties" in node and not node.get(_PRESERVE) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema = _convert(version["schema"]["openAPIV3Schema"])
    kind = crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{GROUP}/{VERSION}"]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    # metadata is the apiserver's own (ObjectMeta): any fields, checked there.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
    return {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "title": f"{kind} {GROUP}/{VERSION}",
        **schema,
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """Path under the schemas folder -> schema."""
    out = {}
    for crd in all_crds().values():
        kind = crd["spec"]["names"]["kind"].lower()
        out[f"{GROUP}/{kind}_{VERSION}.json"] = schema_of(crd)
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def rendered() -> dict[str, str]:
    return {name: render(schema) for name, schema in all_schemas().items()}


def write(directory: Path) -> list[Path]:
    return generated.write(directory, rendered())


def drifted(directory: Path) -> list[str]:
    return generated.drifted(directory, rendered())


def main() -> None:
    generated.main(__doc__.splitlines()[0], rendered)


if __name__ == "__main__":
    main()

"""Regenerate ``servicemonitor.schema.json``, the JSON Schema of a ServiceMonitor resource.

The schema comes from the Prometheus Operator's ServiceMonitor CRD (``monitoring.coreos.com/v1``)
as packaged in the PyPI distribution ``cloudcoil.models.prometheus_operator``, whose models are
generated from the CRD's ``openAPIV3Schema``. Run this with that package installed (it needs
Python 3.10 or newer, so in a throw-away environment, not the project's)::

    python -m venv /tmp/crd && /tmp/crd/bin/pip install cloudcoil.models.prometheus_operator
    /tmp/crd/bin/python tests/schemas/make_servicemonitor_schema.py

Two changes make it match what a cluster accepts from ``kubectl apply``:

- every object that lists its properties gets ``additionalProperties: false``, since kubectl
  asks the API server for strict field validation and an unknown field is an error;
- the ``null`` alternatives that the models add to optional fields are dropped: a manifest has
  no reason to hold ``null``, and the CRD does not mark these fields nullable;
- ``apiVersion``, ``kind`` and ``metadata`` are required, as the API server requires them of
  every object (the models fill them in by default).
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DISTRIBUTION = "cloudcoil.models.prometheus_operator"
NOISE = ("title", "default")


def _without_null(options: list[Any]) -> list[Any]:
    return [option for option in options if option != {"type": "null"}]


def tighten(node: Any) -> Any:
    """The schema ``node`` with nulls dropped and unknown properties forbidden, recursively."""
    if isinstance(node, list):
        return [tighten(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: tighten(value) for key, value in node.items() if key not in NOISE}
    for mapping in ("properties", "$defs", "patternProperties"):
        if isinstance(node.get(mapping), dict):  # names there are fields, not keywords
            result[mapping] = {name: tighten(value) for name, value in node[mapping].items()}
    options = result.get("anyOf")
    if options is not None:
        kept = _without_null(options)
        if len(kept) == 1:
            del result["anyOf"]
            result.update(kept[0])
        else:
            result["anyOf"] = kept
    if "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result


def main() -> None:
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    schema = tighten(ServiceMonitor.model_json_schema(by_alias=True, mode="validation"))
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"ServiceMonitor (monitoring.coreos.com/v1) from {DISTRIBUTION} "
            f"{version(DISTRIBUTION)}; regenerate with make_servicemonitor_schema.py"
        ),
        **schema,
    }
    target = HERE / "servicemonitor.schema.json"
    target.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

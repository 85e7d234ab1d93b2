"""Validated settings: data specs and the workflow's model, training and sampling settings.

pydantic is the single source of truth: the JSON schemas in ``workflow/schemas/`` are exported
from these models (``sgm export-schemas``) and a test keeps them in sync. Every error names the
file and the key path.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from sgm.config.base import SpecError, StrictModel, read_yaml, validate
from sgm.config.spec import (
    SPLITS,
    DataSpec,
    DateRange,
    FieldRef,
    GaussianFieldSource,
    Source,
    Splits,
    StaticField,
    Variable,
    load_spec,
    with_operator,
)
from sgm.config.workflow import (
    DistillSettings,
    ModelEntry,
    ModelSettings,
    SampleSettings,
    SolverChoice,
    TrainSettings,
    TuneSettings,
    TuneStageSettings,
    WorkflowConfig,
    load_workflow_config,
)

__all__ = [
    "DataSpec",
    "DateRange",
    "DistillSettings",
    "FieldRef",
    "GaussianFieldSource",
    "ModelEntry",
    "ModelSettings",
    "SCHEMAS",
    "SPLITS",
    "SampleSettings",
    "SolverChoice",
    "Source",
    "SpecError",
    "Splits",
    "StaticField",
    "StrictModel",
    "TrainSettings",
    "TuneSettings",
    "TuneStageSettings",
    "Variable",
    "WorkflowConfig",
    "json_schemas",
    "load_spec",
    "with_operator",
    "load_workflow_config",
    "read_yaml",
    "validate",
]

SCHEMAS: dict[str, type[BaseModel]] = {
    "data_spec.schema.json": DataSpec,
    "config.schema.json": WorkflowConfig,
}


def _without_defaults_in_unions(schema: dict) -> dict:
    """Drop the defaults of the branches of every ``oneOf`` (the operator kinds).

    Snakemake's ``validate`` fills in defaults while it tries each branch of a ``oneOf``, so
    one branch's defaults would become unknown keys for the next (a ``python`` operator would
    be refused for the ``fraction`` of ``sparse``); the pydantic models fill them instead.
    """
    defs = schema.get("$defs", {})

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for branch in node.get("oneOf", []):
                ref = branch.get("$ref", "") if isinstance(branch, dict) else ""
                target = defs.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/$defs/") else None
                for prop in (target or {}).get("properties", {}).values():
                    prop.pop("default", None)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def json_schemas() -> dict[str, str]:
    """The JSON schemas (draft 2020-12) of the spec and config files, as file texts."""
    texts = {}
    for name, model in SCHEMAS.items():
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
        schema.update(model.model_json_schema())
        texts[name] = json.dumps(_without_defaults_in_unions(schema), indent=2) + "\n"
    return texts

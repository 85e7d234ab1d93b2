"""Shared pieces of sgm's settings: the strict base model, YAML reading, validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
)


class SpecError(ValueError):
    """A data spec or settings file is invalid; the message names the file and the key."""


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


NAME_PATTERN = r"^[A-Za-z0-9_\-]+$"
DATE_PATTERN = r"^-?\d{1,4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2})?)?$"



def _format_errors(path: Path | str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-")) or "(top)"
        lines.append(f"{path}: {loc}: {e['msg']}")
    return "\n".join(lines)


def read_yaml(path: str | Path, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: file does not exist")
    try:
        return yaml.load(path.read_text(), Loader=loader)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc


def validate(model: type[BaseModel], data: Any, origin: str | Path) -> Any:
    """Validate ``data`` against ``model``; errors name ``origin`` and every key path."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise SpecError(_format_errors(origin, err)) from None



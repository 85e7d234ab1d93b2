"""Stage ``export-schemas``: write the JSON schemas of data specs and the workflow config.

``workflow/schemas/`` holds them for Snakemake's ``validate``; a test keeps them in sync with
the pydantic models of ``sgm.config``.
"""

from __future__ import annotations

from pathlib import Path

from sgm.config import json_schemas
from sgm.io.atomic import atomic_write_text


def export_schemas(out: str | Path) -> list[Path]:
    """Write every schema into the folder ``out``; the paths written."""
    out = Path(out)
    written = []
    for name, schema in json_schemas().items():
        written.append(atomic_write_text(out / name, schema))
        print(out / name)
    return written

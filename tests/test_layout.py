"""The package's layout rules (DESIGN.md, "Layout"), read from the source code's imports.

Layers, from the bottom: ``sgm.config`` (validated settings) and ``sgm.core`` (science on
tensors) side by side; ``sgm.io`` (files); ``sgm.report`` (pages from arrays); ``sgm.stages``
(one module per command, translating between files and the core); ``sgm.cli``. Nothing imports
upward, no stage imports another, the core knows no files or stores, nothing imports Snakemake,
and there are no import circles.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgm.cli import build_parser

PACKAGE = Path(__file__).resolve().parents[1] / "sgm"
LAYERS = {"config": 0, "core": 0, "io": 1, "report": 2, "stages": 3, "cli": 4, "__main__": 5}
CORE_FORBIDDEN = ("xarray", "zarr", "netCDF4", "dask", "yaml", "pydantic", "snakemake")


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path) -> Iterator[str]:
    """Every module name imported anywhere in the file (functions included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sgm" else None


def violations(root: Path) -> list[str]:
    """Every broken rule of the package at ``root``, one line each."""
    mods = modules(root)
    found: list[str] = []
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        own = layer(name)
        targets = set(imports(path))
        graph[name] = {t for t in targets if t in mods and t != name}
        for target in sorted(targets):
            top = target.split(".")[0]
            if top == "snakemake":
                found.append(f"{name} imports snakemake")
            if own == "core" and top in CORE_FORBIDDEN:
                found.append(f"{name} (core) imports {top}")
            other = layer(target)
            if other is None or own is None or other == own or target not in mods:
                if own == other == "stages" and target in mods and target != "sgm.stages":
                    found.append(f"{name} imports another stage, {target}")
                continue
            if own in ("core", "config") and other in ("core", "config"):
                found.append(f"{name} ({own}) imports {target} ({other})")
            elif LAYERS.get(other, 0) > LAYERS.get(own, 0):
                found.append(f"{name} ({own}) imports upward: {target} ({other})")
    found.extend(f"import circle: {' -> '.join(c)}" for c in cycles(graph))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative of every import circle (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                out.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return out


def test_the_package_keeps_its_layout_rules() -> None:
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("core/ema.py", "from sgm.io.stores import open_store", "sgm.core.ema (core) imports "
     "upward: sgm.io.stores (io)"),
    ("core/ema.py", "from sgm.config import TrainSettings", "sgm.core.ema (core) imports "
     "sgm.config (config)"),
    ("core/loss.py", "import xarray", "sgm.core.loss (core) imports xarray"),
    ("io/atomic.py", "from sgm.stages import ingest", "sgm.io.atomic (io) imports upward"),
    ("stages/gather.py", "from sgm.stages.ingest import ingest", "imports another stage"),
    ("config/base.py", "import snakemake", "sgm.config.base imports snakemake"),
    ("core/network.py", "from sgm.core import precond", "import circle: sgm.core.precond -> "
     "sgm.core.network -> sgm.core.precond"),
])
def test_a_broken_rule_is_found(tmp_path: Path, module: str, line: str, expected: str) -> None:
    """Negative controls: each rule fails on a copy of the package that breaks it."""
    copy = tmp_path / "sgm"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(f"{line}\n{target.read_text()}")
    assert any(expected in v for v in violations(copy)), violations(copy)


def test_one_stage_module_per_command() -> None:
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    stages = {p.stem.replace("_", "-") for p in (PACKAGE / "stages").glob("*.py")
              if p.stem != "__init__"}
    assert stages == commands


def test_the_trainer_reads_the_validated_train_settings() -> None:
    """One TrainSettings: the core's protocol names fields of the validated settings, with the
    same types, so the workflow's settings are what the trainer reads."""
    from sgm.config import TrainSettings
    from sgm.core import training

    fields = TrainSettings.model_fields
    for name, annotation in training.TrainSettings.__annotations__.items():
        assert name in fields, name
        assert annotation == "Any" or fields[name].annotation.__name__ == annotation, name
    settings = TrainSettings()
    assert set(training.settings_dict(settings)) <= set(settings.model_dump())

"""Validated settings: data specs and the workflow's model, training and sampling settings.

pydantic is the single source of truth: the JSON schemas in ``workflow/schemas/`` are exported
from these models (``sgm export-schemas``) and a test keeps them in sync. Every error names the
file and the key path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SpecError(ValueError):
    """A data spec or settings file is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- data specs


class PackageFile(_Strict):
    """A file shipped inside an installed Python package (found without a machine's path)."""

    package: str = Field(description="Importable package name, e.g. iris_sample_data.")
    path: str = Field(description="Path of the file inside the package.")


class GaussianFieldSource(_Strict):
    """A synthetic stationary Gaussian random field (the exact-posterior oracle)."""

    kind: Literal["gaussian_random_field"] = "gaussian_random_field"
    shape: tuple[int, int] = Field((32, 32), description="Grid size (ny, nx); periodic.")
    length_scale: float = Field(4.0, gt=0, description="Correlation length in pixels.")
    nu: float = Field(1.5, gt=0, description="Matern smoothness.")
    variance: float = Field(1.0, gt=0, description="Marginal variance (physical units squared).")
    mean: float = Field(0.0, description="Mean (physical units).")
    n_times: int = Field(2000, ge=3, description="Number of independent fields to generate.")
    seed: int = Field(0, description="Seed of the generator.")
    units: str = Field("1", description="Units written on the generated variable.")


class Source(_Strict):
    """Where the target fields come from: exactly one of paths, package_file or synthetic."""

    paths: list[str] | None = Field(
        None, description="Files or glob patterns (NetCDF or Zarr), concatenated along time."
    )
    package_file: PackageFile | None = None
    synthetic: GaussianFieldSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("paths", "package_file", "synthetic") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of paths, package_file, synthetic (got {given or 'none'})"
            )
        return self


class Variable(_Strict):
    """One target variable (a channel of the model)."""

    name: str = Field(description="Name used in sgm's stores, e.g. tas.")
    source_name: str | None = Field(None, description="Variable name in the source files.")
    standard_name: str | None = Field(
        None, description="CF standard_name to find the variable by when source_name is unset."
    )
    units: str | None = Field(
        None, description="Expected units of the source variable; a mismatch is an error."
    )


class Region(_Strict):
    """A lat/lon box (degrees); longitudes in the source's convention."""

    lat: tuple[float, float] | None = None
    lon: tuple[float, float] | None = None


class Splits(_Strict):
    """Consecutive time splits train → val → test, as counts or fractions of the time axis."""

    train: float = Field(description="Number (≥ 1) or fraction (< 1) of time steps for training.")
    val: float = Field(description="Number or fraction of time steps for validation.")
    test: float = Field(description="Number or fraction of time steps for testing.")

    def counts(self, n: int) -> tuple[int, int, int]:
        """Resolve to counts for a time axis of length ``n``."""

        def one(v: float) -> int:
            return int(round(v * n)) if v < 1 else int(v)

        train, val, test = one(self.train), one(self.val), one(self.test)
        if min(train, val, test) < 1 or train + val + test > n:
            raise ValueError(
                f"splits need {train}+{val}+{test} time steps (each ≥ 1) but the source has {n}"
            )
        return train, val, test


class Coarsen(_Strict):
    kind: Literal["coarsen"] = "coarsen"
    factor: int = Field(ge=2, description="Block-average factor; the grid is cropped to divide.")
    noise_std: float = Field(0.0, ge=0, description="Observation noise std (physical units).")


class Sparse(_Strict):
    kind: Literal["sparse"] = "sparse"
    fraction: float = Field(gt=0, le=1, description="Fraction of pixels observed.")
    seed: int = Field(0, description="Seed for choosing the observed pixels.")
    noise_std: float = Field(0.0, ge=0, description="Observation noise std (physical units).")


Operator = Annotated[Coarsen | Sparse, Field(discriminator="kind")]


class Conditioning(_Strict):
    """Extra conditioning channels besides the observation."""

    climatology: bool = Field(
        False, description="Add the training split's per-pixel mean of each variable as a channel."
    )


class DataSpec(_Strict):
    """A dataset and its inverse problem: the contract between a dataset and the pipeline."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="Spec name (results folder).")
    description: str = ""
    source: Source
    variables: list[Variable] = Field(min_length=1)
    region: Region | None = None
    splits: Splits
    operator: Operator
    observation_seed: int = Field(
        1234, description="Seed of the observation noise drawn for the val/test observations."
    )
    conditioning: Conditioning = Conditioning()

    def operator_dict(self) -> dict[str, Any]:
        """The operator as given to :func:`sgm.core.operators.build_operator` (noise apart)."""
        return self.operator.model_dump(exclude={"noise_std"})


# ------------------------------------------------------------------- workflow settings


class ModelSettings(_Strict):
    """The U-Net's size."""

    preset: Literal["tiny", "small", "base"] = "tiny"
    base_channels: int | None = Field(None, ge=4, description="Override the preset's width.")
    sigma_data: float = Field(1.0, gt=0, description="EDM sigma_data (data are standardised).")


class TrainSettings(_Strict):
    """Optimisation settings (see sgm.core.training.TrainSettings)."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    lr_warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    ema_beta: float = Field(0.999, gt=0, lt=1)
    ema_warmup: bool = True
    checkpoint_every: int = Field(250, ge=1)
    log_every: int = Field(25, ge=1)
    seed: int = 0
    device: str = "auto"
    P_mean: float = -1.2
    P_std: float = 1.2
    compile: bool = False


class SampleSettings(_Strict):
    """EDM sampler settings."""

    members: int = Field(16, ge=2)
    steps: int = Field(32, ge=1)
    churn: float = Field(0.0, ge=0)
    s_tmin: float = Field(0.0, ge=0)
    s_tmax: float = Field(1e9, ge=0)
    s_noise: float = Field(1.0, gt=0)
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)
    seed: int = 0
    batch_size: int = Field(64, ge=1)
    device: str = "auto"


class ModelEntry(_Strict):
    """A named model in the config: network size plus training settings."""

    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()


class ReportSettings(_Strict):
    n_maps: int = Field(3, ge=1)
    threshold: float | None = Field(None, description="Exceedance threshold; default: q90.")


class WorkflowConfig(_Strict):
    """config/config.yaml."""

    specs: list[str] = Field(min_length=1, description="Data specs to run (data_specs/NAME.yaml).")
    spec_dir: str = "data_specs"
    results: str = "results"
    models: dict[str, ModelEntry] = Field(min_length=1)
    sample: SampleSettings = SampleSettings()
    report: ReportSettings = ReportSettings()


# --------------------------------------------------------------------------- loading


def _format_errors(path: Path | str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-")) or "(top)"
        lines.append(f"{path}: {loc}: {e['msg']}")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: file does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc


def validate(model: type[BaseModel], data: Any, origin: str | Path) -> Any:
    """Validate ``data`` against ``model``; errors name ``origin`` and every key path."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise SpecError(_format_errors(origin, err)) from None


def load_spec(path: str | Path) -> DataSpec:
    """Read and validate a data spec file."""
    return validate(DataSpec, read_yaml(path), path)


def load_workflow_config(path: str | Path) -> WorkflowConfig:
    return validate(WorkflowConfig, read_yaml(path), path)


SCHEMAS: dict[str, type[BaseModel]] = {
    "data_spec.schema.json": DataSpec,
    "config.schema.json": WorkflowConfig,
}


def json_schemas() -> dict[str, str]:
    """The JSON schemas (draft 2020-12) of the spec and config files, as file texts."""
    texts = {}
    for name, model in SCHEMAS.items():
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
        schema.update(model.model_json_schema())
        texts[name] = json.dumps(schema, indent=2) + "\n"
    return texts

"""The workflow's settings (config/config.yaml): specs and models to run, training, sampling,
job resources, reports and observations without truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from sgm.config.base import (
    DATE_PATTERN,
    NAME_PATTERN,
    StrictModel,
    read_yaml,
    validate,
)
from sgm.config.spec import date_fields


class ModelSettings(StrictModel):
    """The U-Net's size."""

    preset: Literal["tiny", "small", "base"] = "tiny"
    base_channels: int | None = Field(None, ge=4, description="Override the preset's width.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout in the residual blocks (against memorising a"
        " small training set)."
    )
    sigma_data: float = Field(1.0, gt=0, description="EDM sigma_data (data are standardised).")
    target: Literal["residual", "field"] = Field(
        "residual",
        description="What the diffusion model learns: the residual from the operator's baseline"
        " (e.g. bicubic), scaled to unit std, or the standardised field itself.",
    )


class TrainSettings(StrictModel):
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


class SampleSettings(StrictModel):
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


class WorkflowSampleSettings(SampleSettings):
    """The config's ``sample:`` section: the sampler settings plus how to split the work."""

    shards: int = Field(
        1, ge=1, description="Split the test times into this many sampling jobs (one GPU each), "
        "gathered into one posterior.zarr; the ensemble does not depend on it."
    )


class JobResources(StrictModel):
    """What one job of a GPU stage asks for (Snakemake resources; the SLURM profile maps them
    to sbatch options and may override them with set-resources)."""

    gpu: int = Field(
        1, ge=0, description="GPUs per job (sbatch --gpus). More than 1 trains with torchrun, one "
        "process per GPU; 0 makes a CPU-only job."
    )
    cpus_per_gpu: int = Field(
        4, ge=1, description="CPU cores per GPU (sbatch --cpus-per-gpu; --cpus-per-task when gpu "
        "is 0). The job's threads are cpus_per_gpu × max(gpu, 1), capped by --cores locally."
    )
    mem_mb: int = Field(16000, ge=1, description="Memory per job in MB (sbatch --mem).")
    runtime: int = Field(
        720, ge=1, description="Wall-clock limit per job in minutes (sbatch -t)."
    )


class SampleJobResources(JobResources):
    """Resources of one sampling job: one device per job; more GPUs means more shards."""

    gpu: int = Field(
        1, ge=0, le=1, description="GPUs per sampling job (0 or 1; use sample.shards to spread "
        "sampling over several GPUs)."
    )
    runtime: int = Field(120, ge=1, description="Wall-clock limit per job in minutes (sbatch -t).")


class Resources(StrictModel):
    """Per-job resources of the GPU stages; the other stages are 1-core CPU jobs."""

    train: JobResources = JobResources()
    sample: SampleJobResources = SampleJobResources()


class ModelEntry(StrictModel):
    """A named model in the config: network size plus training settings."""

    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()


class ReportSettings(StrictModel):
    n_maps: int = Field(3, ge=1)
    threshold: float | None = Field(None, description="Exceedance threshold; default: q90.")


DateText = Annotated[str, Field(pattern=DATE_PATTERN)]


class ExternalObservations(StrictModel):
    """Coarse observations from a file training never saw (e.g. another emissions scenario):
    every model of ``spec`` samples their posterior, reported without truth."""

    spec: str = Field(pattern=NAME_PATTERN, description="The data spec whose models sample them.")
    name: str = Field(
        pattern=NAME_PATTERN, description="Name of this set of observations (results/<spec>/"
        "external/<name>/ and results/<spec>/<model>/external/<name>/)."
    )
    file: str = Field(
        min_length=1, description="NetCDF file with the coarse observations on the spec's coarse "
        "grid (or fine fields with make_coarse): a path, or package:<package>/<path in it>."
    )
    variables: dict[str, str] = Field(
        min_length=1, description="sgm variable name -> variable name in the file, for every "
        "variable of the spec, e.g. {tas: air_temperature}."
    )
    make_coarse: bool = Field(
        False, description="The file holds fine fields on the spec's grid: block-average them "
        "with the spec's operator first (demos, testing the path)."
    )
    time_slice: tuple[DateText, DateText] | None = Field(
        None, description="[start, end] dates YYYY-MM-DD, both included; default: every time."
    )

    @field_validator("time_slice", mode="before")
    @classmethod
    def _dates_as_text(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [v.isoformat() if isinstance(v, dt.date) else v for v in value]
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ExternalObservations:
        if self.time_slice and date_fields(self.time_slice[0]) > date_fields(self.time_slice[1]):
            raise ValueError(f"time_slice: start {self.time_slice[0]} is after end "
                             f"{self.time_slice[1]}")
        return self


class WorkflowConfig(StrictModel):
    """config/config.yaml."""

    specs: list[str] = Field(min_length=1, description="Data specs to run (data_specs/NAME.yaml).")
    spec_dir: str = "data_specs"
    results: str = "results"
    models: dict[str, ModelEntry] = Field(min_length=1)
    sample: WorkflowSampleSettings = WorkflowSampleSettings()
    report: ReportSettings = ReportSettings()
    resources: Resources = Resources()
    external: list[ExternalObservations] = Field(
        [], description="Observations from files training never saw, sampled by every model."
    )


def load_workflow_config(path: str | Path) -> WorkflowConfig:
    return validate(WorkflowConfig, read_yaml(path), path)



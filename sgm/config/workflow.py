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
from sgm.config.spec import Operator, date_fields


class ModelSettings(StrictModel):
    """What the model learns and the U-Net's size."""

    kind: Literal["conditional", "prior"] = Field(
        "conditional",
        description="conditional: p(x | y) for the spec's observation system (amortised, "
        "fastest); prior: p(x) alone, combined with any observation model at sampling time "
        "(zero-shot inversion: sample.method mmps, dps or tmpd).",
    )
    preset: Literal["tiny", "small", "base"] = "tiny"
    base_channels: int | None = Field(None, ge=4, description="Override the preset's width.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout in the residual blocks (against memorising a"
        " small training set)."
    )
    sigma_data: float = Field(1.0, gt=0, description="EDM sigma_data (data are standardised).")
    target: Literal["residual", "field", "anomaly"] | None = Field(
        None,
        description="What the diffusion model learns: the residual from the operator's baseline"
        " (e.g. bicubic), scaled to unit std (conditional models); the standardised field "
        "itself; or, for priors, its anomaly from the training mean per pixel in units of its "
        "year-to-year std (sgm.core.anomaly). Default: residual for conditional models, "
        "anomaly for priors.",
    )

    @model_validator(mode="after")
    def _target(self) -> ModelSettings:
        if self.target is None:
            self.target = "anomaly" if self.kind == "prior" else "residual"
        elif self.kind == "prior" and self.target == "residual":
            raise ValueError("target: a prior model has no observation operator, so it learns "
                             "the field or its anomaly (target: field or anomaly)")
        elif self.kind == "conditional" and self.target == "anomaly":
            raise ValueError("target: anomaly is for prior models; a conditional model learns "
                             "the residual from its observation's baseline or the field")
        return self


SolverName = Literal["heun", "dpm", "dpm++", "sde"]


class SolverChoice(StrictModel):
    """A solver and its step count (``sgm.core.solvers``)."""

    solver: SolverName = Field("dpm", description="heun (EDM), dpm (multistep exponential "
                               "integrator, noise prediction), dpm++ (data prediction) or sde "
                               "(SDE-DPM-Solver++).")
    order: int = Field(3, ge=1, le=3, description="Order of dpm/dpm++ (1-3) or sde (1-2).")
    steps: int = Field(8, ge=1, description="Steps: NFE = steps for dpm/dpm++/sde, 2 steps - 1 "
                       "for heun.")

    @model_validator(mode="after")
    def _order(self) -> SolverChoice:
        if self.solver == "sde" and self.order > 2:
            raise ValueError("order: the sde solver has order 1 or 2")
        return self


class WassersteinSettings(StrictModel):
    """WassDiff's distribution regulariser (Liu et al. 2025): the loss becomes
    (1 − weight)·L_DSM + weight·W at noise levels below sigma_max (``sgm.core.wasserstein``)."""

    weight: float = Field(0.0, ge=0, le=1, description="λ; 0 switches the regulariser off "
                          "(WassDiff: 0.2).")
    sigma_max: float = Field(0.5, gt=0, description="Only denoised estimates at noise levels "
                             "below this are compared (the term pulls against the exact "
                             "denoiser at large sigma).")
    kind: Literal["marginal", "sliced"] = Field(
        "marginal", description="marginal: W1 of each field's pixel-value distribution against "
        "the truth's (targets the tail; per sample); sliced: WassDiff's sliced W1 over the "
        "batch of fields.")
    projections: int = Field(100, ge=1, description="Random projections of the sliced kind.")


class SelectSettings(StrictModel):
    """Model selection on the validation split: every snapshot samples a small validation
    ensemble; the one with the lowest fair CRPS (mean over variables of CRPS / std) is kept,
    and the spread inflation that makes its spread/skill ratio 1 there is stored with it."""

    enabled: bool = Field(False, description="Choose among the snapshots (needs "
                          "snapshot_every > 0; conditional models only).")
    members: int = Field(4, ge=2, description="Members per validation time for choosing.")
    recalibration_members: int = Field(
        16, ge=2, description="Members per validation time of the chosen snapshot's ensemble "
        "that the spread recalibration is fitted to."
    )
    max_times: int = Field(40, ge=1, description="At most this many validation times.")
    solver: SolverChoice = Field(
        default_factory=lambda: SolverChoice(solver="dpm", order=3, steps=10),
        description="The solver of the validation ensembles.",
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
    snapshot_every: int = Field(
        0, ge=0, description="Keep the EMA weights every this many steps (0: only the last); "
        "with select.enabled, the snapshot that scores best on the validation split is the "
        "model."
    )
    patch: list[int] = Field(
        [], description="Train on random patches [h, w] of the fields (grids larger than one "
        "network call; at least the correlation length of the residual, multiples of a "
        "coarsening factor); empty: whole fields."
    )
    position: Literal["grid", "sphere", "none"] = Field(
        "grid", description="Position channels of a patch-trained model: grid (normalised row "
        "and column) or sphere (the unit vector of latitude and longitude)."
    )
    level_shift: float | dict[str, float] = Field(
        0.0, description="Train on fields shifted by a random uniform offset, one per member "
        "and variable, of this standard deviation in the variable's units (one number for "
        "every variable, or {variable: std}): the domain mean may then drift beyond the "
        "training years' (a warming climate) while the patterns are learned as before "
        "(sgm.core.level_shift). 0: off."
    )
    wasserstein: WassersteinSettings = Field(
        default_factory=WassersteinSettings,
        description="A distribution regulariser for extremes (off by default).",
    )
    select: SelectSettings = Field(
        default_factory=SelectSettings, description="Choose the model among the snapshots on "
        "the validation split (and fit the spread recalibration there)."
    )

    @field_validator("level_shift")
    @classmethod
    def _level_shift(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        values = v.values() if isinstance(v, dict) else [v]
        if any(not (x >= 0 and x < float("inf")) for x in values):
            raise ValueError(f"must be a finite standard deviation >= 0 (or one per variable), "
                             f"got {v}")
        return v


class SampleSettings(StrictModel):
    """Sampler settings: the solver, its discretisation and the ensemble."""

    members: int = Field(16, ge=2)
    method: Literal["auto", "conditional", "onestep", "mmps", "dps", "tmpd"] = Field(
        "auto", description="conditional (a conditional model's p(x | y)), or a zero-shot "
        "method for a prior model and any observation model: mmps (moment matching, Rozet et "
        "al. 2024), dps (Chung et al. 2023), tmpd (Boys et al. 2023). auto: conditional for "
        "conditional models, mmps for priors."
    )
    recalibrate: bool = Field(
        False, description="Inflate the members' spread by the factor fitted on the validation "
        "split when the model was chosen (train.select); the raw members are kept as "
        "<variable>_raw."
    )
    cg_iterations: int = Field(8, ge=0, description="Conjugate-gradient steps of mmps.")
    covariance_sigma: float | None = Field(
        3.0, gt=0, description="mmps: above this noise level (in the prior network's units: "
        "the fields' year-to-year std for the default anomaly target; 97.5 % of the training "
        "noise levels lie below 3) Tweedie's covariance comes "
        "from the network's Jacobian at this level, where it is reliable, rather than at the "
        "step's (sgm.core.guidance.MMPS); null: at every step's own level, as in the paper "
        "(exact for an exact denoiser, but a trained one's Jacobian error is amplified by "
        "sigma^2 at high noise).")
    dps_step: float = Field(0.3, gt=0, description="DPS step size zeta (per member).")
    solver: SolverName = Field("dpm", description="heun, dpm, dpm++ or sde (see "
                               "sgm.core.solvers); ignored with steps: auto.")
    order: int = Field(3, ge=1, le=3, description="Order of the multistep solvers.")
    steps: int | Literal["auto"] = Field(
        8, description="Solver steps, or auto: the cheapest setting that matches a high-NFE "
        "reference on the validation split (sgm tune-sampler, settings under tune)."
    )
    churn: float = Field(0.0, ge=0, description="EDM stochastic churn (heun only).")
    s_tmin: float = Field(0.0, ge=0)
    s_tmax: float = Field(1e9, ge=0)
    s_noise: float = Field(1.0, gt=0)
    eta: float = Field(1.0, ge=0, description="Stochasticity of the sde solver (1: ancestral).")
    start_sigma: float | None = Field(
        None, gt=0, description="Start the multistep solvers one step earlier at this noise "
        "level (> sigma_max) to remove the start's mean bias (one more NFE); rarely needed "
        "with the residual target, whose posterior mean is near 0."
    )
    tile: list[int] = Field(
        [], description="Denoise on overlapping tiles [h, w] blended into one field (grids "
        "larger than memory); empty: the whole field in one call."
    )
    tile_overlap: int = Field(16, ge=0, description="Overlap of neighbouring tiles (pixels).")
    tile_periodic: bool = Field(False, description="Tiles wrap around the grid (periodic "
                                "domains).")
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)
    seed: int = 0
    batch_size: int = Field(64, ge=1, description="Members integrated together (memory); "
                            "the members do not depend on it.")
    device: str = "auto"

    @model_validator(mode="after")
    def _order(self) -> SampleSettings:
        if self.solver == "sde" and self.order > 2:
            raise ValueError("order: the sde solver has order 1 or 2")
        return self


def _default_candidates() -> list[SolverChoice]:
    return ([SolverChoice(solver="dpm", order=3, steps=n) for n in (4, 5, 6, 7, 8, 10, 12, 16)]
            + [SolverChoice(solver="dpm", order=2, steps=n) for n in (6, 8, 12, 16)]
            + [SolverChoice(solver="heun", steps=n) for n in (4, 6, 8)])


class TuneSettings(StrictModel):
    """How ``steps: auto`` is chosen (``sgm tune-sampler``): candidates in order of cost are
    sampled on the validation split and compared with a high-NFE reference drawn from the
    same initial noise; the cheapest within both tolerances wins."""

    candidates: list[SolverChoice] = Field(default_factory=_default_candidates,
                                           min_length=1)
    reference: SolverChoice = Field(
        default_factory=lambda: SolverChoice(solver="dpm", order=3, steps=32),
        description="The high-NFE reference (dpm order 3 with 32 steps: calibrated to 0.1 % "
        "on the Gaussian oracle).",
    )
    crps_tolerance: float = Field(0.01, gt=0, description="Largest relative fair-CRPS "
                                  "difference from the reference.")
    spread_tolerance: float = Field(0.02, gt=0, description="Largest relative spread "
                                    "difference from the reference.")
    members: int = Field(8, ge=2, description="Members per validation time.")
    max_times: int = Field(40, ge=1, description="At most this many validation times.")


class TuneStageSettings(SampleSettings):
    """What ``sgm tune-sampler`` reads: the sampler settings and how to tune them."""

    tune: TuneSettings = TuneSettings()


class WorkflowSampleSettings(SampleSettings):
    """The config's ``sample:`` section: the sampler settings, how ``steps: auto`` is tuned
    and how to split the work."""

    tune: TuneSettings = TuneSettings()

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


class DistillSettings(StrictModel):
    """Score-of-Mixture Distillation of a conditional model into a one-step sampler
    (sgm.core.distill, sgm.core.distillation; the stage sgm distill)."""

    enabled: bool = Field(False, description="Distil the trained conditional model into a "
                          "one-step sampler (sgm distill → onestep.pt) and draw this model's "
                          "posterior with it: one network call per member (sample method "
                          "onestep) instead of the solver's steps.")
    teacher: str | None = Field(None, description="Distil another entry of models: (its "
                                "model.pt) instead of training one for this entry: a model "
                                "'tiny_onestep' with teacher 'tiny' puts the one-step posterior "
                                "beside the multistep one (sgm compare shows both).")
    steps: int = Field(1000, ge=1, description="Mixture-score updates (the generator is "
                       "updated every generator_every of them).")
    batch_size: int = Field(32, ge=1)
    lr_generator: float = Field(3e-4, gt=0)
    lr_score: float = Field(3e-3, gt=0, description="Learning rate of the mixture denoiser.")
    lr_warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of both networks.")
    grad_clip: float = Field(10.0, ge=0)
    ema_beta: float = Field(0.99, gt=0, lt=1, description="EMA of the generator's weights.")
    ema_warmup: bool = True
    generator_every: int = Field(5, ge=1, description="Mixture-score updates per generator "
                                 "update (the reference code's dfake_gen_update_ratio).")
    sigma_g: float = Field(2.5, gt=0, description="The generator's fixed noise level: "
                           "x = D(sigma_g z; sigma_g, y).")
    alpha_min: float = Field(0.5, gt=0, le=1, description="Smallest alpha of the generator "
                             "updates (1: reverse KL as DMD; smaller: more mode covering).")
    alpha_zero_prob: float = Field(0.25, ge=0, le=1, description="Probability of alpha = 0 "
                                   "(the fake score) in the mixture-score updates.")
    alpha_levels: int = Field(1001, ge=2, description="alpha takes the values k/(levels - 1).")
    sigma_min: float = Field(0.02, gt=0, description="Noise levels of both losses: the rho ramp "
                             "from sigma_max down to sigma_min.")
    sigma_max: float = Field(5.0, gt=0)
    rho: float = Field(7.0, gt=0)
    generator_sigma_trim: float = Field(0.02, ge=0, lt=0.5, description="The generator's noise "
                                        "levels skip this fraction at both ends of the ramp.")
    checkpoint_every: int = Field(250, ge=1)
    log_every: int = Field(25, ge=1)
    seed: int = 0
    device: str = "auto"


class ModelEntry(StrictModel):
    """A named model in the config: network size plus training settings."""

    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    distill: DistillSettings = Field(
        default_factory=DistillSettings,
        description="One-step sampling by distillation (off by default; enabled: true).",
    )


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


class Inversion(StrictModel):
    """An observation system inverted with a prior model (zero-shot Bayesian inversion): its
    observations are simulated from the spec's validation and test fields with this operator
    and noise, and the prior samples their posterior with a zero-shot method."""

    spec: str = Field(pattern=NAME_PATTERN, description="The data spec.")
    name: str = Field(
        pattern=NAME_PATTERN, description="Name of this observation system (results/<spec>/"
        "inversions/<name>/ and results/<spec>/<prior>/inversions/<name>/)."
    )
    prior: str = Field(pattern=NAME_PATTERN, description="A model of models: with kind: "
                       "prior.")
    operator: Operator = Field(description="The observation operator and its noise_std, as in "
                               "a data spec (a station file is relative to spec_dir).")
    sample: dict[str, Any] = Field(
        {}, description="Sampler settings for this inversion, over those of sample: (e.g. "
        "{method: dps, steps: 16})."
    )

    @field_validator("sample")
    @classmethod
    def _sample_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(SampleSettings.model_fields))
        if unknown:
            raise ValueError(f"unknown sampler setting(s) {', '.join(unknown)}")
        return v


class ProductsSettings(StrictModel):
    """The analysts' files beside every posterior.zarr: posterior.nc (CF-1.10 NetCDF) and
    products.zarr (ensemble mean, std, quantiles, exceedance probabilities per time step)."""

    enabled: bool = Field(True, description="Write posterior.nc and products.zarr (sgm export, "
                          "sgm products) for every spec and model.")
    quantiles: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [0.05, 0.5, 0.95], description="Quantile levels of products.zarr (empty: none)."
    )
    thresholds: dict[str, dict[str, list[float]]] = Field(
        {}, description="spec -> variable -> thresholds in the variable's units: products.zarr "
        "holds the probability of exceeding each (fraction of members above it)."
    )
    chunks: Literal["time", "pixel"] = Field(
        "time", description="Chunk layout of posterior.nc and products.zarr: time (a few whole "
        "maps per chunk: fast maps, what reports read) or pixel (every time of a block of "
        "pixels: fast time series at a point)."
    )


class WorkflowConfig(StrictModel):
    """config/config.yaml."""

    specs: list[str] = Field(min_length=1, description="Data specs to run (data_specs/NAME.yaml).")
    spec_dir: str = "data_specs"
    results: str = "results"
    models: dict[str, ModelEntry] = Field(min_length=1)
    sample: WorkflowSampleSettings = WorkflowSampleSettings()
    report: ReportSettings = ReportSettings()
    resources: Resources = Resources()
    products: ProductsSettings = ProductsSettings()
    external: list[ExternalObservations] = Field(
        [], description="Observations from files training never saw, sampled by every model."
    )
    inversions: list[Inversion] = Field(
        [], description="Observation systems inverted with a prior model (zero-shot)."
    )

    @model_validator(mode="after")
    def _inversions(self) -> WorkflowConfig:
        seen = set()
        for i, inv in enumerate(self.inversions):
            if (inv.spec, inv.name) in seen:
                raise ValueError(f"inversions.{i}: spec {inv.spec!r} has two inversions named "
                                 f"{inv.name!r}")
            seen.add((inv.spec, inv.name))
            entry = self.models.get(inv.prior)
            if entry is None or entry.model.kind != "prior":
                raise ValueError(f"inversions.{i}.prior: {inv.prior!r} is not a model of kind "
                                 "prior in models:")
            SampleSettings.model_validate({**self.sample.model_dump(exclude={"shards", "tune"}),
                                           **inv.sample})
        return self


def load_workflow_config(path: str | Path) -> WorkflowConfig:
    return validate(WorkflowConfig, read_yaml(path), path)



# Helpers shared by the rules: paths, config slices, stage versions and job resources.
import hashlib
import json
import shlex
from pathlib import Path

RESULTS = config.get("results", "results")
SPEC_DIR = config.get("spec_dir", "data_specs")

# Package code is invisible to Snakemake's code-change trigger: bump a stage's version when
# the meaning of its output changes, and the stage (and everything after it) reruns.
STAGE_VERSION = {
    "ingest": "3",
    "observe": "3",
    "train": "5",
    "sample": "3",
    "tune_sampler": "1",
    "distill": "1",
    "compare": "1",
    "export": "1",
    "products": "1",
    "gather": "3",
    "evaluate": "2",
    "report": "3",
}


# Rules that only wire files run on the submitting machine, never as cluster jobs.
localrules:
    all,
    compare,
    gather,
    gather_inversion,


wildcard_constraints:
    spec=r"[A-Za-z0-9_\-]+",
    model=r"[A-Za-z0-9_\-]+",
    shard=r"\d+",
    shards=r"\d+",


def spec_file(wildcards):
    return f"{SPEC_DIR}/{wildcards.spec}.yaml"


def as_json(value):
    """A config slice as one shell-quoted JSON word (params: changes trigger reruns)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def without_unused(settings, switch, keys):
    """``settings`` without ``keys`` when its ``switch`` is empty (the feature is off): options
    of a feature that is not used do not change what a job makes, so they neither rerun it nor
    move a training run to a new folder."""
    if settings.get(switch):
        return settings
    return {k: v for k, v in settings.items() if k not in (switch, *keys)}


def training_entry(wildcards):
    """The model entry that identifies a training run: without its distillation (distilling
    a model does not retrain it), without the patch options when it trains on whole fields and
    without a level shift of 0."""
    entry = {k: v for k, v in config["models"][wildcards.model].items() if k != "distill"}
    if "train" in entry:
        entry["train"] = without_unused(entry["train"], "patch", ("position",))
        entry["train"] = without_unused(entry["train"], "level_shift", ())
    return entry


def model_settings(wildcards):
    """What train reads (see training_entry)."""
    return as_json(training_entry(wildcards))


def train_state(wildcards):
    """The undeclared folder of a training run's checkpoints and loss log, one per settings.

    A killed or timed-out job rerun with the same settings resumes from its last checkpoint;
    changed settings (retraining) start afresh in a new folder instead of resuming a run whose
    weights no longer fit or whose optimiser followed other settings. The train stage's version
    is part of the key: a new version learns something else from the same settings.
    """
    settings = json.dumps({"entry": training_entry(wildcards),
                           "version": STAGE_VERSION["train"]}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return f"{RESULTS}/{wildcards.spec}/{wildcards.model}/train_state/{digest}"


def distilled(wildcards):
    """Whether the model's posterior is drawn by its distilled one-step sampler."""
    return bool((config["models"][wildcards.model].get("distill") or {}).get("enabled"))


def teacher(wildcards):
    """The model entry whose model.pt a distilled entry distils: its ``teacher`` or itself."""
    name = (config["models"][wildcards.model].get("distill") or {}).get("teacher")
    if name is None:
        return wildcards.model
    if name not in config["models"] or name == wildcards.model:
        raise ValueError(f"config: models: {wildcards.model}: distill: teacher {name!r} is not "
                         "another entry of models:")
    return name


def teacher_model(wildcards):
    return f"{RESULTS}/{wildcards.spec}/{teacher(wildcards)}/model.pt"


def training_loss(wildcards):
    """The training loss log shown in a model's report (its teacher's for a distilled entry)."""
    return f"{RESULTS}/{wildcards.spec}/{teacher(wildcards)}/loss.csv"


def distill_settings(wildcards):
    settings = config["models"][wildcards.model]["distill"]
    return as_json({k: v for k, v in settings.items() if k != "teacher"})


def distill_state(wildcards):
    """The undeclared folder of a distillation run (checkpoints, loss log), one per settings of
    the model and its distillation: a killed job resumes, changed settings start afresh."""
    entry = config["models"][wildcards.model]
    settings = json.dumps([entry, config["models"][teacher(wildcards)]], sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return f"{RESULTS}/{wildcards.spec}/{wildcards.model}/distill_state/{digest}"


def sampled_model(wildcards):
    """What sample_shard draws from: onestep.pt of a distilled model, else model.pt."""
    name = "onestep.pt" if distilled(wildcards) else "model.pt"
    return f"{RESULTS}/{wildcards.spec}/{wildcards.model}/{name}"


# Settings only the zero-shot methods of prior models read: left out for the other models, so
# that changing them reruns no conditional sampling.
ZERO_SHOT_KEYS = ("cg_iterations", "covariance_sigma", "dps_step")


def for_model(settings, wildcards):
    """``settings`` without the zero-shot keys unless the model is a prior."""
    kind = (config["models"][wildcards.model].get("model") or {}).get("kind", "conditional")
    if kind == "prior":
        return settings
    return {k: v for k, v in settings.items() if k not in ZERO_SHOT_KEYS}


def sample_settings(wildcards):
    """The sampler's settings: everything in ``sample:`` but how the work is split and tuned."""
    settings = {k: v for k, v in config["sample"].items() if k not in ("shards", "tune")}
    settings = for_model(without_unused(settings, "tile", ("tile_overlap", "tile_periodic")),
                         wildcards)
    if distilled(wildcards):  # the teacher's spread recalibration does not hold for it
        settings.update(method="onestep", recalibrate=False)
    return as_json(settings)


def tune_settings(wildcards):
    """What tune-sampler reads: the sampler's settings and its ``tune:`` section."""
    settings = {k: v for k, v in config["sample"].items() if k != "shards"}
    return as_json(for_model(without_unused(settings, "tile", ("tile_overlap", "tile_periodic")),
                             wildcards))


AUTO_STEPS = config["sample"].get("steps") == "auto"


def tuning_file(wildcards):
    """tuning.json of the model, an input of sampling when ``steps: auto`` (not of a one-step
    sampler, which has no steps to tune)."""
    if not AUTO_STEPS or distilled(wildcards):
        return []
    return f"{RESULTS}/{wildcards.spec}/{wildcards.model}/tuning.json"


def tuning_option(wildcards, input):
    """``--tuning <file>`` with ``steps: auto``, else nothing."""
    return f"--tuning {shlex.quote(str(input.tuning))}" if input.get("tuning") else ""


# ----------------------------------------------------------------------- job resources
# config["resources"][stage] holds gpu, cpus_per_gpu, mem_mb and runtime of one train or sample
# job (defaults filled in by the schema). A profile may override them per rule with
# set-resources: the training launcher follows the job's actual gpu count, while threads come
# from the config (override them with set-threads) since a rule's threads cannot depend on its
# resources.


def job_threads(stage):
    """A GPU stage's threads: cpus_per_gpu per GPU (one GPU's worth for a CPU-only job)."""
    res = config["resources"][stage]
    return res["cpus_per_gpu"] * max(1, res["gpu"])


# The start of the train rule's shell command: it sets $sgm to `sgm`, or to torchrun with one
# DDP process per GPU when the job has several, and $threads to each process's share of the
# job's threads. Shell rather than params: params are rerun triggers, and the job's size (GPUs,
# cores) must never retrain a model.
TRAIN_LAUNCHER = (
    "if [ {resources.gpu} -gt 1 ]; then"
    " sgm='torchrun --standalone --nproc-per-node={resources.gpu} -m sgm';"
    " threads=$(( {threads} / {resources.gpu} )); [ $threads -ge 1 ] || threads=1;"
    " else sgm=sgm; threads={threads}; fi; "
)


def posterior_shards(wildcards):
    """The shard stores that gather assembles into posterior.zarr."""
    shards = config["sample"]["shards"]
    return [
        f"{RESULTS}/{wildcards.spec}/{wildcards.model}/shards/posterior-{i}-of-{shards}.zarr"
        for i in range(shards)
    ]


def all_reports():
    return expand(
        f"{RESULTS}/{{spec}}/{{model}}/report",
        spec=config["specs"],
        model=list(config["models"]),
    )


def all_products():
    """posterior.nc and products.zarr of every spec and model (none when disabled)."""
    if not config["products"]["enabled"]:
        return []
    return expand(
        [f"{RESULTS}/{{spec}}/{{model}}/posterior.nc",
         f"{RESULTS}/{{spec}}/{{model}}/products.zarr"],
        spec=config["specs"],
        model=list(config["models"]),
    )


def spec_runs(wildcards):
    """{label: metrics.json} of every model and every inversion of the spec, in config order."""
    runs = {m: f"{RESULTS}/{wildcards.spec}/{m}/metrics.json" for m in config["models"]}
    for (spec, name), inv in INVERSIONS.items():
        if spec == wildcards.spec:
            runs[f"{inv['prior']}: {name}"] = (
                f"{RESULTS}/{spec}/{inv['prior']}/inversions/{name}/metrics.json")
    return runs


def all_comparisons():
    return expand(f"{RESULTS}/{{spec}}/comparison.html", spec=config["specs"])

# Helpers shared by the rules: paths, config slices, and stage versions.
import json
import shlex
from pathlib import Path

RESULTS = config.get("results", "results")
SPEC_DIR = config.get("spec_dir", "data_specs")

# Package code is invisible to Snakemake's code-change trigger: bump a stage's version when
# the meaning of its output changes, and the stage (and everything after it) reruns.
STAGE_VERSION = {
    "ingest": "1",
    "observe": "1",
    "train": "1",
    "sample": "1",
    "evaluate": "1",
    "report": "1",
}


wildcard_constraints:
    spec=r"[A-Za-z0-9_\-]+",
    model=r"[A-Za-z0-9_\-]+",


def spec_file(wildcards):
    return f"{SPEC_DIR}/{wildcards.spec}.yaml"


def as_json(value):
    """A config slice as one shell-quoted JSON word (params: changes trigger reruns)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def model_settings(wildcards):
    return as_json(config["models"][wildcards.model])


def sample_settings(wildcards):
    return as_json(config["sample"])


def all_reports():
    return expand(
        f"{RESULTS}/{{spec}}/{{model}}/report/index.html",
        spec=config["specs"],
        model=list(config["models"]),
    )

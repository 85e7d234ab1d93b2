# Helpers of the inversion rules (inversion.smk): the config's `inversions:` entries, their
# sampler settings and targets. An inversion is an observation system inverted with a prior
# model: results/{spec}/inversions/{name}/obs.zarr (its observations), and
# results/{spec}/{model}/inversions/{name}/ (posterior, metrics, report).

INVERSIONS = {(inv["spec"], inv["name"]): inv for inv in config.get("inversions", [])}


def inversion(wildcards):
    key = (wildcards.spec, wildcards.name)
    if key not in INVERSIONS:
        raise ValueError(f"config: inversions: no entry with spec {key[0]!r} and name {key[1]!r}")
    return INVERSIONS[key]


def inversion_sample(wildcards, with_tune=False):
    """The inversion's sampler settings: sample: with the entry's overrides."""
    drop = ("shards",) if with_tune else ("shards", "tune")
    base = {k: v for k, v in config["sample"].items() if k not in drop}
    merged = {**base, **inversion(wildcards).get("sample", {})}
    return without_unused(merged, "tile", ("tile_overlap", "tile_periodic"))


def inversion_dir(wildcards):
    return f"{RESULTS}/{wildcards.spec}/{wildcards.model}/inversions/{wildcards.name}"


def inversion_auto(wildcards):
    return inversion_sample(wildcards).get("steps") == "auto"


def inversion_tuning(wildcards):
    return f"{inversion_dir(wildcards)}/tuning.json" if inversion_auto(wildcards) else []


def inversion_tuning_option(wildcards, input):
    return f"--tuning {shlex.quote(str(input.tuning))}" if inversion_auto(wildcards) else ""


def inversion_shards(wildcards):
    shards = config["sample"]["shards"]
    return [f"{inversion_dir(wildcards)}/shards/posterior-{i}-of-{shards}.zarr"
            for i in range(shards)]


def all_inversion_reports():
    """The report of every inversion of the specs being run."""
    return [
        f"{RESULTS}/{spec}/{inv['prior']}/inversions/{name}/report"
        for (spec, name), inv in INVERSIONS.items()
        if spec in config["specs"]
    ]

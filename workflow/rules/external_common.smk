# Helpers of the external-observation rules (external.smk): the config's `external:` entries,
# the files they name, and the report targets.
import shlex

# Bump when the meaning of a stage's output changes (see STAGE_VERSION in common.smk); sampling
# is the sample stage itself and uses its version.
EXTERNAL_STAGE_VERSION = {"coarsen": "1", "observe": "2", "report": "1"}
PACKAGE_PREFIX = "package:"


def _external_entries():
    """The config's external entries by (spec, name); a pair given twice is an error."""
    entries = {}
    for entry in config.get("external", []):
        key = (entry["spec"], entry["name"])
        if key in entries:
            raise ValueError(f"config: external: spec {key[0]!r} has two entries named {key[1]!r}")
        entries[key] = entry
    return entries


EXTERNAL = _external_entries()


wildcard_constraints:
    name=r"[A-Za-z0-9_\-]+",


def external_entry(wildcards):
    """The config entry of {spec}/{name}."""
    key = (wildcards.spec, wildcards.name)
    if key not in EXTERNAL:
        raise ValueError(f"config: external: no entry with spec {key[0]!r} and name {key[1]!r}")
    return EXTERNAL[key]


def _on_disk(source):
    """A path as an input file; a package reference is no file Snakemake can track."""
    return [] if source.startswith(PACKAGE_PREFIX) else [source]


def external_observed_file(wildcards):
    """The coarse file observe_external reads: made by coarsen_external, or the entry's file."""
    entry = external_entry(wildcards)
    if entry.get("make_coarse", False):
        return f"{RESULTS}/{wildcards.spec}/external/{wildcards.name}/coarse.nc"
    return entry["file"]


def external_time_slice(wildcards):
    time_slice = external_entry(wildcards).get("time_slice")
    return f"--time-slice {shlex.join(map(str, time_slice))}" if time_slice else ""


def external_file_variables(wildcards):
    names = sorted(set(external_entry(wildcards)["variables"].values()))
    return " ".join(f"--variable {shlex.quote(n)}" for n in names)


def all_external_reports():
    """The report of every configured external entry for every model, for the specs being run
    (an entry for a spec that is not in `specs:` is skipped, e.g. with another --configfile)."""
    return [
        f"{RESULTS}/{spec}/{model}/external/{name}/report"
        for spec, name in EXTERNAL
        if spec in config["specs"]
        for model in config["models"]
    ]

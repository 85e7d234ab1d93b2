# sgm: gridded fields → conditional score-based diffusion model → posterior ensembles → report.
# Rules are thin: each one calls an `sgm <stage>` command; all science lives in the sgm package.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.json")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    input:
        all_reports(),
    default_target: True

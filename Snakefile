# sgm: gridded fields → conditional score-based diffusion model → posterior ensembles → report.
# Rules are thin: each one calls an `sgm <stage>` command; all science lives in the sgm package.
#
# `snakemake --lint` asks for a conda environment or container per rule. That finding is left on
# purpose: every rule runs the same installed `sgm` package, from the environment snakemake itself
# runs in (`make setup`, or environment.yml on clusters), so per-rule environments would only
# install that package once per rule.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.json")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/inversion.smk"
include: "workflow/rules/products.smk"
include: "workflow/rules/compare.smk"


rule all:
    input:
        all_reports(),
        all_external_reports(),
        all_inversion_reports(),
        all_products(),
        all_comparisons(),
    default_target: True

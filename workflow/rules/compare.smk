# Every posterior of a spec side by side (sgm compare): its models (conditional, distilled) and
# the inversions of its prior models, scores, calibration and cost per member in one table.
# (spec_runs and all_comparisons are in common.smk)


rule compare:
    input:
        metrics=lambda w: list(spec_runs(w).values()),
    output:
        html=f"{RESULTS}/{{spec}}/comparison.html",
        csv=f"{RESULTS}/{{spec}}/comparison.csv",
    log:
        f"{RESULTS}/{{spec}}/logs/compare.log",
    params:
        version=STAGE_VERSION["compare"],
        runs=lambda w: " ".join(
            f"--run {shlex.quote(f'{label}={path}')}" for label, path in spec_runs(w).items()),
    shell:
        "sgm compare {params.runs} --out {output.html:q} --csv {output.csv:q} > {log:q} 2>&1"

rule evaluate:
    input:
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        obs=f"{RESULTS}/{{spec}}/obs.zarr",
        posterior=f"{RESULTS}/{{spec}}/{{model}}/posterior.zarr",
    output:
        metrics=f"{RESULTS}/{{spec}}/{{model}}/metrics.json",
        maps=directory(f"{RESULTS}/{{spec}}/{{model}}/maps.zarr"),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/evaluate.tsv",
    params:
        version=STAGE_VERSION["evaluate"],
    shell:
        "sgm evaluate --fields {input.fields:q} --obs {input.obs:q} --posterior {input.posterior:q}"
        " --metrics {output.metrics:q} --maps {output.maps:q} > {log:q} 2>&1"


rule report:
    input:
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        obs=f"{RESULTS}/{{spec}}/obs.zarr",
        posterior=f"{RESULTS}/{{spec}}/{{model}}/posterior.zarr",
        metrics=f"{RESULTS}/{{spec}}/{{model}}/metrics.json",
        loss=training_loss,
        tuning=tuning_file,
    output:
        html=report(
            directory(f"{RESULTS}/{{spec}}/{{model}}/report"),
            htmlindex="index.html",
            caption="../report/report.rst",
            category="Posterior ensembles",
            subcategory="{spec} / {model}",
        ),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/report.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/report.tsv",
    params:
        version=STAGE_VERSION["report"],
        n_maps=config["report"]["n_maps"],
        tuning=tuning_option,
        threshold=lambda w: (
            ""
            if config["report"].get("threshold") is None
            else f"--threshold {config['report']['threshold']}"
        ),
    shell:
        "sgm report --fields {input.fields:q} --obs {input.obs:q} --posterior {input.posterior:q}"
        " --metrics {input.metrics:q} --loss {input.loss:q} --out {output.html:q}/index.html"
        " --n-maps {params.n_maps} {params.threshold} {params.tuning} > {log:q} 2>&1"

# Observations from files training never saw (config `external:`): made coarse from fine fields
# when asked, checked against the spec's obs.zarr, sampled by every model and reported without
# truth. Results: results/{spec}/external/{name}/ (observations) and
# results/{spec}/{model}/external/{name}/ (posterior and report).


include: "external_common.smk"


rule coarsen_external:
    input:
        spec=spec_file,
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        fine=lambda w: _on_disk(external_entry(w)["file"]),
    output:
        coarse=f"{RESULTS}/{{spec}}/external/{{name}}/coarse.nc",
    log:
        f"{RESULTS}/{{spec}}/logs/external-{{name}}-coarsen.log",
    benchmark:
        f"{RESULTS}/{{spec}}/benchmarks/external-{{name}}-coarsen.tsv",
    params:
        version=EXTERNAL_STAGE_VERSION["coarsen"],
        source=lambda w: shlex.quote(external_entry(w)["file"]),
        variables=external_file_variables,
        time_slice=external_time_slice,
    shell:
        "sgm coarsen-file --spec {input.spec:q} --fields {input.fields:q} --source {params.source}"
        " {params.variables} {params.time_slice} --out {output.coarse:q} > {log:q} 2>&1"


rule observe_external:
    input:
        obs=f"{RESULTS}/{{spec}}/obs.zarr",
        coarse=lambda w: _on_disk(external_observed_file(w)),
    output:
        obs=directory(f"{RESULTS}/{{spec}}/external/{{name}}/obs.zarr"),
    log:
        f"{RESULTS}/{{spec}}/logs/external-{{name}}-observe.log",
    benchmark:
        f"{RESULTS}/{{spec}}/benchmarks/external-{{name}}-observe.tsv",
    params:
        version=EXTERNAL_STAGE_VERSION["observe"],
        file=lambda w: shlex.quote(external_observed_file(w)),
        variables=lambda w: as_json(external_entry(w)["variables"]),
        time_slice=external_time_slice,
    shell:
        "sgm observe-external --obs {input.obs:q} --file {params.file}"
        " --variables {params.variables} {params.time_slice} --out {output.obs:q} > {log:q} 2>&1"


rule sample_external:
    input:
        model=sampled_model,
        obs=f"{RESULTS}/{{spec}}/external/{{name}}/obs.zarr",
        tuning=tuning_file,
    output:
        posterior=directory(f"{RESULTS}/{{spec}}/{{model}}/external/{{name}}/posterior.zarr"),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/external-{{name}}-sample.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/external-{{name}}-sample.tsv",
    params:
        version=STAGE_VERSION["sample"],
        settings=sample_settings,
        tuning=tuning_option,
    threads: job_threads("sample")
    resources:
        gpu=config["resources"]["sample"]["gpu"],
        cpus_per_gpu=config["resources"]["sample"]["cpus_per_gpu"],
        mem_mb=config["resources"]["sample"]["mem_mb"],
        runtime=config["resources"]["sample"]["runtime"],
    shell:
        "sgm sample --threads {threads} --split external --model {input.model:q} {params.tuning}"
        " --obs {input.obs:q} --out {output.posterior:q} --settings {params.settings} > {log:q} 2>&1"


rule report_external:
    input:
        obs=f"{RESULTS}/{{spec}}/external/{{name}}/obs.zarr",
        posterior=f"{RESULTS}/{{spec}}/{{model}}/external/{{name}}/posterior.zarr",
    output:
        html=report(
            directory(f"{RESULTS}/{{spec}}/{{model}}/external/{{name}}/report"),
            htmlindex="index.html",
            caption="../report/external.rst",
            category="External observations",
            subcategory="{spec} / {model} / {name}",
        ),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/external-{{name}}-report.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/external-{{name}}-report.tsv",
    params:
        version=EXTERNAL_STAGE_VERSION["report"],
        # The `report:` settings, as the evaluation report rule passes them.
        n_maps=rules.report.params.n_maps,
        threshold=rules.report.params.threshold,
    shell:
        "sgm report-external --obs {input.obs:q} --posterior {input.posterior:q}"
        " --out {output.html:q}/index.html --n-maps {params.n_maps} {params.threshold}"
        " > {log:q} 2>&1"

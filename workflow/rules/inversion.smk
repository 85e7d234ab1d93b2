# Zero-shot Bayesian inversion (config `inversions:`): one prior model, many observation
# systems. Each inversion's observations are simulated from the validation and test fields
# with its own operator, the prior samples their posterior with a zero-shot method (MMPS by
# default), and the result is evaluated and reported like a conditional model's.


include: "inversion_common.smk"


rule observe_inversion:
    input:
        spec=spec_file,
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
    output:
        obs=directory(f"{RESULTS}/{{spec}}/inversions/{{name}}/obs.zarr"),
    log:
        f"{RESULTS}/{{spec}}/logs/inversion-{{name}}-observe.log",
    benchmark:
        f"{RESULTS}/{{spec}}/benchmarks/inversion-{{name}}-observe.tsv",
    params:
        version=STAGE_VERSION["observe"],
        operator=lambda w: as_json(inversion(w)["operator"]),
    shell:
        "sgm observe --spec {input.spec:q} --fields {input.fields:q}"
        " --operator {params.operator} --out {output.obs:q} > {log:q} 2>&1"


rule tune_inversion:
    input:
        model=f"{RESULTS}/{{spec}}/{{model}}/model.pt",
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        obs=f"{RESULTS}/{{spec}}/inversions/{{name}}/obs.zarr",
    output:
        tuning=f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/tuning.json",
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/inversion-{{name}}-tune-sampler.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/inversion-{{name}}-tune-sampler.tsv",
    params:
        version=STAGE_VERSION["tune_sampler"],
        settings=lambda w: as_json(inversion_sample(w, with_tune=True)),
    threads: job_threads("sample")
    resources:
        gpu=SAMPLE_RESOURCES["gpu"],
        cpus_per_gpu=SAMPLE_RESOURCES["cpus_per_gpu"],
        mem_mb=SAMPLE_RESOURCES["mem_mb"],
        runtime=SAMPLE_RESOURCES["runtime"],
    shell:
        "sgm tune-sampler --threads {threads} --model {input.model:q} --fields {input.fields:q}"
        " --obs {input.obs:q} --out {output.tuning:q} --settings {params.settings}"
        " > {log:q} 2>&1"


rule sample_inversion_shard:
    input:
        model=f"{RESULTS}/{{spec}}/{{model}}/model.pt",
        obs=f"{RESULTS}/{{spec}}/inversions/{{name}}/obs.zarr",
        tuning=inversion_tuning,
    output:
        posterior=directory(
            f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/shards/"
            "posterior-{shard}-of-{shards}.zarr"
        ),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/inversion-{{name}}-sample-{{shard}}-of-{{shards}}.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/"
        "inversion-{name}-sample-{shard}-of-{shards}.tsv",
    params:
        version=STAGE_VERSION["sample"],
        settings=lambda w: as_json(inversion_sample(w)),
        tuning=inversion_tuning_option,
    threads: job_threads("sample")
    resources:
        gpu=SAMPLE_RESOURCES["gpu"],
        cpus_per_gpu=SAMPLE_RESOURCES["cpus_per_gpu"],
        mem_mb=SAMPLE_RESOURCES["mem_mb"],
        runtime=SAMPLE_RESOURCES["runtime"],
    shell:
        "sgm sample --threads {threads} --model {input.model:q} --obs {input.obs:q}"
        " --shard {wildcards.shard} --shards {wildcards.shards} {params.tuning}"
        " --out {output.posterior:q} --settings {params.settings} > {log:q} 2>&1"


rule gather_inversion:
    input:
        shards=inversion_shards,
    output:
        posterior=directory(f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/posterior.zarr"),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/inversion-{{name}}-gather.log",
    params:
        version=STAGE_VERSION["gather"],
    shell:
        "sgm gather {input.shards:q} --out {output.posterior:q} > {log:q} 2>&1"


rule evaluate_inversion:
    input:
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        obs=f"{RESULTS}/{{spec}}/inversions/{{name}}/obs.zarr",
        posterior=f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/posterior.zarr",
    output:
        metrics=f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/metrics.json",
        maps=directory(f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/maps.zarr"),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/inversion-{{name}}-evaluate.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/inversion-{{name}}-evaluate.tsv",
    params:
        version=STAGE_VERSION["evaluate"],
    shell:
        "sgm evaluate --fields {input.fields:q} --obs {input.obs:q} --posterior {input.posterior:q}"
        " --metrics {output.metrics:q} --maps {output.maps:q} > {log:q} 2>&1"


rule report_inversion:
    input:
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        obs=f"{RESULTS}/{{spec}}/inversions/{{name}}/obs.zarr",
        posterior=f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/posterior.zarr",
        metrics=f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/metrics.json",
        loss=f"{RESULTS}/{{spec}}/{{model}}/loss.csv",
        tuning=inversion_tuning,
    output:
        html=report(
            directory(f"{RESULTS}/{{spec}}/{{model}}/inversions/{{name}}/report"),
            htmlindex="index.html",
            caption="../report/inversion.rst",
            category="Zero-shot inversions",
            subcategory="{spec} / {model} / {name}",
        ),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/inversion-{{name}}-report.log",
    params:
        version=STAGE_VERSION["report"],
        n_maps=config["report"]["n_maps"],
        threshold=rules.report.params.threshold,
        tuning=inversion_tuning_option,
    shell:
        "sgm report --fields {input.fields:q} --obs {input.obs:q} --posterior {input.posterior:q}"
        " --metrics {input.metrics:q} --loss {input.loss:q} --out {output.html:q}/index.html"
        " --n-maps {params.n_maps} {params.threshold} {params.tuning} > {log:q} 2>&1"

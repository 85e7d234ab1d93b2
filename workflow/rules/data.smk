rule ingest:
    input:
        spec=spec_file,
    output:
        fields=directory(f"{RESULTS}/{{spec}}/fields.zarr"),
    log:
        f"{RESULTS}/{{spec}}/logs/ingest.log",
    benchmark:
        f"{RESULTS}/{{spec}}/benchmarks/ingest.tsv",
    params:
        version=STAGE_VERSION["ingest"],
    shell:
        "sgm ingest --spec {input.spec:q} --out {output.fields:q} > {log:q} 2>&1"


rule observe:
    input:
        spec=spec_file,
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
    output:
        obs=directory(f"{RESULTS}/{{spec}}/obs.zarr"),
    log:
        f"{RESULTS}/{{spec}}/logs/observe.log",
    benchmark:
        f"{RESULTS}/{{spec}}/benchmarks/observe.tsv",
    params:
        version=STAGE_VERSION["observe"],
    shell:
        "sgm observe --spec {input.spec:q} --fields {input.fields:q} --out {output.obs:q} > {log:q} 2>&1"

# Files for analysts' own tools beside every posterior (config `products:`): the ensemble as
# CF NetCDF (sgm export) and its per-time summaries (sgm products).


rule export:
    input:
        posterior=f"{RESULTS}/{{spec}}/{{model}}/posterior.zarr",
    output:
        nc=f"{RESULTS}/{{spec}}/{{model}}/posterior.nc",
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/export.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/export.tsv",
    params:
        version=STAGE_VERSION["export"],
        chunks=config["products"]["chunks"],
    shell:
        "sgm export --posterior {input.posterior:q} --out {output.nc:q}"
        " --chunks {params.chunks} > {log:q} 2>&1"


rule products:
    input:
        posterior=f"{RESULTS}/{{spec}}/{{model}}/posterior.zarr",
    output:
        products=directory(f"{RESULTS}/{{spec}}/{{model}}/products.zarr"),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/products.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/products.tsv",
    params:
        version=STAGE_VERSION["products"],
        quantiles=" ".join(str(q) for q in config["products"]["quantiles"]),
        thresholds=lambda w: as_json(config["products"]["thresholds"].get(w.spec, {})),
        chunks=config["products"]["chunks"],
    shell:
        "sgm products --posterior {input.posterior:q} --out {output.products:q}"
        " --quantiles {params.quantiles} --thresholds {params.thresholds}"
        " --chunks {params.chunks} > {log:q} 2>&1"

# The GPU stages. Each job's size (gpu, cpus_per_gpu, mem_mb, runtime) comes from the config's
# `resources:` section; a profile may override it per rule (set-resources). Where jobs run
# (partition, account) is the profile's business, never the rules'.
TRAIN_RESOURCES = config["resources"]["train"]
SAMPLE_RESOURCES = config["resources"]["sample"]


rule train:
    input:
        spec=spec_file,
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        obs=f"{RESULTS}/{{spec}}/obs.zarr",
    output:
        model=f"{RESULTS}/{{spec}}/{{model}}/model.pt",
        loss=f"{RESULTS}/{{spec}}/{{model}}/loss.csv",
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/train.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/train.tsv",
    params:
        version=STAGE_VERSION["train"],
        settings=model_settings,
        # Resumable state (checkpoints) lives beside the outputs, undeclared, so that a killed
        # job resumes instead of starting over.
        workdir=train_state,
    threads: job_threads("train")
    resources:
        gpu=TRAIN_RESOURCES["gpu"],
        cpus_per_gpu=TRAIN_RESOURCES["cpus_per_gpu"],
        mem_mb=TRAIN_RESOURCES["mem_mb"],
        runtime=TRAIN_RESOURCES["runtime"],
    shell:
        # $sgm is `sgm`, or torchrun with one process per GPU when the job has several
        f"{TRAIN_LAUNCHER}$sgm train --threads $threads --spec {{input.spec:q}}"
        " --fields {input.fields:q} --obs {input.obs:q} --out {output.model:q}"
        " --workdir {params.workdir:q}"
        " --settings {params.settings} > {log:q} 2>&1"
        " && cp {params.workdir:q}/loss.csv {output.loss:q}"


rule tune_sampler:
    input:
        model=f"{RESULTS}/{{spec}}/{{model}}/model.pt",
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        obs=f"{RESULTS}/{{spec}}/obs.zarr",
    output:
        tuning=f"{RESULTS}/{{spec}}/{{model}}/tuning.json",
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/tune-sampler.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/tune-sampler.tsv",
    params:
        version=STAGE_VERSION["tune_sampler"],
        settings=tune_settings,
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


rule distill:
    input:
        model=teacher_model,
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
        obs=f"{RESULTS}/{{spec}}/obs.zarr",
    output:
        onestep=f"{RESULTS}/{{spec}}/{{model}}/onestep.pt",
        loss=f"{RESULTS}/{{spec}}/{{model}}/distill_loss.csv",
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/distill.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/distill.tsv",
    params:
        version=STAGE_VERSION["distill"],
        settings=distill_settings,
        # checkpoints beside the outputs, undeclared, so that a killed job resumes
        workdir=distill_state,
    threads: job_threads("train")
    resources:
        gpu=min(1, TRAIN_RESOURCES["gpu"]),  # one process: one GPU at most
        cpus_per_gpu=TRAIN_RESOURCES["cpus_per_gpu"],
        mem_mb=TRAIN_RESOURCES["mem_mb"],
        runtime=TRAIN_RESOURCES["runtime"],
    shell:
        "sgm distill --threads {threads} --model {input.model:q} --fields {input.fields:q}"
        " --obs {input.obs:q} --out {output.onestep:q} --workdir {params.workdir:q}"
        " --settings {params.settings} > {log:q} 2>&1"
        " && cp {params.workdir:q}/distill_loss.csv {output.loss:q}"


rule sample_shard:
    input:
        model=sampled_model,
        obs=f"{RESULTS}/{{spec}}/obs.zarr",
        tuning=tuning_file,
    output:
        posterior=directory(
            f"{RESULTS}/{{spec}}/{{model}}/shards/posterior-{{shard}}-of-{{shards}}.zarr"
        ),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/sample-{{shard}}-of-{{shards}}.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/sample-{{shard}}-of-{{shards}}.tsv",
    params:
        version=STAGE_VERSION["sample"],
        settings=sample_settings,
        tuning=tuning_option,
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


rule gather:
    input:
        shards=posterior_shards,
    output:
        posterior=directory(f"{RESULTS}/{{spec}}/{{model}}/posterior.zarr"),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/gather.log",
    benchmark:
        f"{RESULTS}/{{spec}}/{{model}}/benchmarks/gather.tsv",
    params:
        version=STAGE_VERSION["gather"],
    shell:
        "sgm gather {input.shards:q} --out {output.posterior:q} > {log:q} 2>&1"

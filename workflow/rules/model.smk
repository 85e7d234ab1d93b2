rule train:
    input:
        spec=spec_file,
        fields=f"{RESULTS}/{{spec}}/fields.zarr",
    output:
        model=f"{RESULTS}/{{spec}}/{{model}}/model.pt",
        loss=f"{RESULTS}/{{spec}}/{{model}}/loss.csv",
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/train.log",
    params:
        version=STAGE_VERSION["train"],
        settings=model_settings,
        # Resumable state (checkpoints) lives beside the outputs, undeclared, so that a killed
        # job resumes instead of starting over.
        workdir=lambda w: f"{RESULTS}/{w.spec}/{w.model}/train_state",
    resources:
        gpu=1,
    shell:
        "sgm train --spec {input.spec} --fields {input.fields} --out {output.model}"
        " --workdir {params.workdir} --settings {params.settings} > {log} 2>&1"
        " && cp {params.workdir}/loss.csv {output.loss}"


rule sample:
    input:
        model=f"{RESULTS}/{{spec}}/{{model}}/model.pt",
        obs=f"{RESULTS}/{{spec}}/obs.zarr",
    output:
        posterior=directory(f"{RESULTS}/{{spec}}/{{model}}/posterior.zarr"),
    log:
        f"{RESULTS}/{{spec}}/{{model}}/logs/sample.log",
    params:
        version=STAGE_VERSION["sample"],
        settings=sample_settings,
    resources:
        gpu=1,
    shell:
        "sgm sample --model {input.model} --obs {input.obs} --out {output.posterior}"
        " --settings {params.settings} > {log} 2>&1"

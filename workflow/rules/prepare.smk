rule metadata:
    input:
        code=code_deps("metadata"),
    output:
        classes=f"{ROOT}/classes.csv",
        ontology=f"{ROOT}/ontology.json",
    params:
        values=stage_params("metadata"),
        resolved=PARAMS,
    log:
        "logs/metadata.log",
    conda:
        "../../envs/psla.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m pipeline.stages.metadata --params {params.resolved}"
        " --classes {output.classes} --ontology {output.ontology} > {log} 2>&1"


# One job per shard of a split (a job array on SLURM), then one merge job per split.
rule prepare:
    input:
        classes=rules.metadata.output.classes,
        code=code_deps("prepare"),
    output:
        audio=directory(f"{ROOT}/audio/{{split}}/shard-{{shard}}"),
        manifest=f"{ROOT}/manifests/{{split}}.shards/{{shard}}.csv",
        report=f"{ROOT}/reports/prepare_{{split}}.shards/{{shard}}.json",
    params:
        values=stage_params("prepare"),
        resolved=PARAMS,
        manifest=f"{ROOT}/manifests/{{split}}.csv",
        report=f"{ROOT}/reports/prepare_{{split}}.json",
    log:
        "logs/prepare_{split}.shard-{shard}.log",
    conda:
        "../../envs/psla.yaml"
    wildcard_constraints:
        split="|".join(SPLITS),
        shard=r"\d+",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "python -m pipeline.stages.prepare --params {params.resolved} --split {wildcards.split}"
        " --shard {wildcards.shard} --classes {input.classes} --audio-dir {output.audio} --manifest {params.manifest}"
        " --report {params.report} --no-progress > {log} 2>&1"


rule prepare_merge:
    input:
        classes=rules.metadata.output.classes,
        manifests=expand(f"{ROOT}/manifests/{{{{split}}}}.shards/{{shard}}.csv", shard=SHARDS),
        reports=expand(f"{ROOT}/reports/prepare_{{{{split}}}}.shards/{{shard}}.json", shard=SHARDS),
        code=code_deps("prepare_merge"),
    output:
        manifest=f"{ROOT}/manifests/{{split}}.csv",
        report=f"{ROOT}/reports/prepare_{{split}}.json",
    params:
        values=stage_params("prepare_merge"),
        resolved=PARAMS,
    log:
        "logs/prepare_merge_{split}.log",
    conda:
        "../../envs/psla.yaml"
    wildcard_constraints:
        split="|".join(SPLITS),
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.stages.prepare --params {params.resolved} --split {wildcards.split} --merge"
        " --classes {input.classes} --manifest {output.manifest} --report {output.report} > {log} 2>&1"

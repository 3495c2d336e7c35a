# Shard i of features computes the clips of shard i of prepare; one merge job per split stitches them.
rule features:
    input:
        manifest=f"{ROOT}/manifests/{{split}}.shards/{{shard}}.csv",
        audio=f"{ROOT}/audio/{{split}}/shard-{{shard}}",
        classes=rules.metadata.output.classes,
        code=code_deps("features"),
    output:
        h5=f"{ROOT}/features/{{split}}.shards/{{shard}}.h5",
        report=f"{ROOT}/reports/features_{{split}}.shards/{{shard}}.json",
    params:
        values=stage_params("features"),
        resolved=PARAMS,
    log:
        "logs/features_{split}.shard-{shard}.log",
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
        "python -m pipeline.stages.features --params {params.resolved} --manifest {input.manifest}"
        " --classes {input.classes} --out {output.h5} --report {output.report} --no-progress > {log} 2>&1"


rule features_merge:
    input:
        manifest=f"{ROOT}/manifests/{{split}}.csv",
        classes=rules.metadata.output.classes,
        shards=expand(f"{ROOT}/features/{{{{split}}}}.shards/{{shard}}.h5", shard=SHARDS),
        reports=expand(f"{ROOT}/reports/features_{{{{split}}}}.shards/{{shard}}.json", shard=SHARDS),
        code=code_deps("features_merge"),
    output:
        h5=f"{ROOT}/features/{{split}}.h5",
        report=f"{ROOT}/reports/features_{{split}}.json",
    params:
        values=stage_params("features_merge"),
        resolved=PARAMS,
    log:
        "logs/features_merge_{split}.log",
    conda:
        "../../envs/psla.yaml"
    wildcard_constraints:
        split="|".join(SPLITS),
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.stages.features --params {params.resolved} --merge --manifest {input.manifest}"
        " --classes {input.classes} --out {output.h5} --report {output.report} > {log} 2>&1"


rule stats:
    input:
        h5=f"{ROOT}/features/train.h5",
        code=code_deps("stats"),
    output:
        stats=f"{ROOT}/features/stats.json",
    params:
        values=stage_params("stats"),
        resolved=PARAMS,
    log:
        "logs/stats.log",
    conda:
        "../../envs/psla.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m pipeline.stages.stats --params {params.resolved} --features {input.h5} --out {output.stats}"
        " > {log} 2>&1"

# Shard i of features computes the clips of shard i of prepare; one merge job per split stitches them.
rule features:
    input:
        manifest=f"{ROOT}/manifests/{{split}}.shards/{{shard}}.csv",
        audio=f"{ROOT}/audio/{{split}}/shard-{{shard}}",
        classes=rules.metadata.output.classes,
    output:
        h5=f"{ROOT}/features/{{split}}.shards/{{shard}}.h5",
        report=f"{ROOT}/reports/features_{{split}}.shards/{{shard}}.json",
    log:
        "logs/features_{split}.shard-{shard}.log",
    wildcard_constraints:
        split="|".join(SPLITS),
        shard=r"\d+",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "python -m pipeline.stages.features --params {PARAMS} --manifest {input.manifest} --classes {input.classes}"
        " --out {output.h5} --report {output.report} --no-progress > {log} 2>&1"


rule features_merge:
    input:
        manifest=f"{ROOT}/manifests/{{split}}.csv",
        classes=rules.metadata.output.classes,
        shards=expand(f"{ROOT}/features/{{{{split}}}}.shards/{{shard}}.h5", shard=SHARDS),
        reports=expand(f"{ROOT}/reports/features_{{{{split}}}}.shards/{{shard}}.json", shard=SHARDS),
    output:
        h5=f"{ROOT}/features/{{split}}.h5",
        report=f"{ROOT}/reports/features_{{split}}.json",
    log:
        "logs/features_merge_{split}.log",
    wildcard_constraints:
        split="|".join(SPLITS),
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.stages.features --params {PARAMS} --merge --manifest {input.manifest}"
        " --classes {input.classes} --out {output.h5} --report {output.report} > {log} 2>&1"


rule stats:
    input:
        h5=f"{ROOT}/features/train.h5",
    output:
        stats=f"{ROOT}/features/stats.json",
    log:
        "logs/stats.log",
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m pipeline.stages.stats --params {PARAMS} --features {input.h5} --out {output.stats} > {log} 2>&1"

rule metadata:
    output:
        classes=f"{ROOT}/classes.csv",
        ontology=f"{ROOT}/ontology.json",
    log:
        "logs/metadata.log",
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m pipeline.stages.metadata --params {PARAMS}"
        " --classes {output.classes} --ontology {output.ontology} > {log} 2>&1"


rule prepare:
    input:
        classes=rules.metadata.output.classes,
    output:
        audio=directory(f"{ROOT}/audio/{{split}}"),
        manifest=f"{ROOT}/manifests/{{split}}.csv",
        report=f"{ROOT}/reports/prepare_{{split}}.json",
    log:
        "logs/prepare_{split}.log",
    wildcard_constraints:
        split="|".join(SPLITS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "python -m pipeline.stages.prepare --params {PARAMS} --split {wildcards.split} --classes {input.classes}"
        " --audio-dir {output.audio} --manifest {output.manifest} --report {output.report} --no-progress > {log} 2>&1"

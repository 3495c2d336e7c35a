rule weights:
    input:
        manifest=f"{ROOT}/manifests/train.csv",
        classes=rules.metadata.output.classes,
    output:
        weights=f"{ROOT}/weights/train.csv",
    log:
        "logs/weights.log",
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.stages.weights --params {PARAMS} --manifest {input.manifest} --classes {input.classes}"
        " --out {output.weights} > {log} 2>&1"

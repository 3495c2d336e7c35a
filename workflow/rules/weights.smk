rule weights:
    input:
        manifest=lambda wc: f"{ROOT}/manifests/{WEIGHTS_MANIFEST[wc.labels]}",
        classes=rules.metadata.output.classes,
    output:
        weights=f"{ROOT}/weights/{{labels}}.csv",
    log:
        "logs/weights_{labels}.log",
    wildcard_constraints:
        labels="original|enhanced",
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.stages.weights --params {PARAMS} --manifest {input.manifest} --classes {input.classes}"
        " --out {output.weights} > {log} 2>&1"

rule weights:
    input:
        manifest=lambda wc: f"{ROOT}/manifests/{WEIGHTS_MANIFEST[wc.labels]}",
        classes=rules.metadata.output.classes,
        code=code_deps("weights"),
    output:
        weights=f"{ROOT}/weights/{{labels}}.csv",
    params:
        values=stage_params("weights"),
        resolved=PARAMS,
    log:
        "logs/weights_{labels}.log",
    conda:
        "../../envs/psla.yaml"
    wildcard_constraints:
        labels="original|enhanced",
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.stages.weights --params {params.resolved} --manifest {input.manifest}"
        " --classes {input.classes} --out {output.weights} > {log} 2>&1"

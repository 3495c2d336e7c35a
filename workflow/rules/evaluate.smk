rule average:
    input:
        best="models/seed-{seed}/best.pt",
        **training_inputs(None),
        code=code_deps("average"),
    output:
        wa="models/wa/seed-{seed}.pt",
    params:
        values=stage_params("average"),
        resolved=PARAMS,
    log:
        "logs/average_seed-{seed}.log",
    conda:
        "../../envs/psla.yaml"
    wildcard_constraints:
        seed=r"\d+",
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m pipeline.stages.average --params {params.resolved} --run models/seed-{wildcards.seed}"
        " --out {output.wa} --train-features {input.train} --weights {input.weights} > {log} 2>&1"


rule evaluate:
    input:
        wa=expand("models/wa/seed-{seed}.pt", seed=SEEDS),
        features=expand(f"{ROOT}/features/{{split}}.h5", split=EVAL_SPLITS),
        classes=rules.metadata.output.classes,
        code=code_deps("evaluate"),
    output:
        metrics="metrics/eval.json",
        summary="metrics/summary.txt",
        thresholds="metrics/thresholds.json",
    params:
        values=stage_params("evaluate"),
        resolved=PARAMS,
        features_dir=lambda wildcards, input: str(Path(input.features[0]).parent),
    log:
        "logs/evaluate.log",
    conda:
        "../../envs/psla.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    shell:
        "python -m pipeline.stages.evaluate --params {params.resolved} --runs-pattern models/seed-{{seed}}"
        " --wa-pattern models/wa/seed-{{seed}}.pt --features-dir {params.features_dir} --classes {input.classes}"
        " --out-dir metrics --plots-dir plots/evaluate --predictions-dir metrics/predictions --onnx --no-progress > {log} 2>&1"

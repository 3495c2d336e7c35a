rule average:
    input:
        best="models/seed-{seed}/best.pt",
        **training_inputs(None),
    output:
        wa="models/wa/seed-{seed}.pt",
    log:
        "logs/average_seed-{seed}.log",
    wildcard_constraints:
        seed=r"\d+",
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m pipeline.stages.average --params {PARAMS} --run models/seed-{wildcards.seed} --out {output.wa}"
        " --train-features {input.train} --weights {input.weights} > {log} 2>&1"


rule evaluate:
    input:
        wa=expand("models/wa/seed-{seed}.pt", seed=config["train"]["seeds"]),
        features=expand(f"{ROOT}/features/{{split}}.h5", split=config["evaluate"]["splits"]),
        classes=rules.metadata.output.classes,
    output:
        metrics="metrics/eval.json",
        summary="metrics/summary.txt",
    log:
        "logs/evaluate.log",
    threads: 4
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    shell:
        "python -m pipeline.stages.evaluate --params {PARAMS} --runs-pattern models/seed-{{seed}}"
        " --wa-pattern models/wa/seed-{{seed}}.pt --features-dir {ROOT}/features --classes {input.classes}"
        " --out-dir metrics --plots-dir plots/evaluate --predictions-dir metrics/predictions --no-progress > {log} 2>&1"

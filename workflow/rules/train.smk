rule train:
    input:
        unpack(training_inputs),
        val=f"{ROOT}/features/val.h5",
        stats=f"{ROOT}/features/stats.json",
        classes=rules.metadata.output.classes,
        code=code_deps("train"),
    output:
        # Not the whole run folder: Snakemake deletes a job's outputs before rerunning it, and the
        # epoch checkpoints and last.pt there are what an interrupted run resumes from.
        best="models/seed-{seed}/best.pt",
        history="plots/train/seed-{seed}.csv",
    params:
        values=stage_params("train"),
        resolved=PARAMS,
    log:
        "logs/train_seed-{seed}.log",
    conda:
        "../../envs/psla.yaml"
    wildcard_constraints:
        seed=r"\d+",
    threads: 4
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=1,
    shell:
        "python -m pipeline.stages.train --params {params.resolved} --train-features {input.train}"
        " --val-features {input.val} --weights {input.weights} --stats {input.stats} --classes {input.classes}"
        " --out models/seed-{wildcards.seed} --seed {wildcards.seed} --history {output.history} --no-progress"
        " > {log} 2>&1"

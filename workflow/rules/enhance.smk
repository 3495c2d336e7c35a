# Label enhancement: only requested when labels.enhance is not none (see training_inputs in common.smk).


rule teacher:
    input:
        train=f"{ROOT}/features/train.h5",
        val=f"{ROOT}/features/val.h5",
        stats=f"{ROOT}/features/stats.json",
        weights=f"{ROOT}/weights/original.csv",
        classes=rules.metadata.output.classes,
        code=code_deps("teacher"),
    output:
        best="models/teacher/best.pt",
        history="plots/train/teacher.csv",
        scores=f"{ROOT}/predictions/teacher_train.npz",
    params:
        values=stage_params("teacher"),
        resolved=PARAMS,
    log:
        "logs/teacher.log",
    conda:
        "../../envs/psla.yaml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=1,
    shell:
        "python -m pipeline.stages.teacher --params {params.resolved} --train-features {input.train}"
        " --val-features {input.val} --weights {input.weights} --stats {input.stats} --classes {input.classes}"
        " --out models/teacher --seed 0 --history {output.history}"
        " --predict-features {input.train} --predict-out {output.scores} --no-progress > {log} 2>&1"


rule enhance:
    input:
        manifest=f"{ROOT}/manifests/train.csv",
        classes=rules.metadata.output.classes,
        ontology=rules.metadata.output.ontology,
        scores=rules.teacher.output.scores,
        code=code_deps("enhance"),
    output:
        manifest=f"{ROOT}/manifests/train_enhanced.csv",
        report=f"{ROOT}/reports/enhance.json",
    params:
        values=stage_params("enhance"),
        resolved=PARAMS,
    log:
        "logs/enhance.log",
    conda:
        "../../envs/psla.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m pipeline.stages.enhance --params {params.resolved} --manifest {input.manifest}"
        " --classes {input.classes} --ontology {input.ontology} --scores {input.scores} --out {output.manifest}"
        " --report {output.report} > {log} 2>&1"


rule relabel:
    input:
        features=f"{ROOT}/features/train.h5",
        manifest=rules.enhance.output.manifest,
        classes=rules.metadata.output.classes,
        code=code_deps("relabel"),
    output:
        features=f"{ROOT}/features/train_enhanced.h5",
        report=f"{ROOT}/reports/relabel.json",
    params:
        values=stage_params("relabel"),
        resolved=PARAMS,
    log:
        "logs/relabel.log",
    conda:
        "../../envs/psla.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m pipeline.stages.relabel --params {params.resolved} --features {input.features}"
        " --manifest {input.manifest} --classes {input.classes} --out {output.features} --report {output.report}"
        " > {log} 2>&1"

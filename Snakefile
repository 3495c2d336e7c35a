# The same DAG as dvc.yaml, for clusters:  snakemake --cores 8 --profile slurm
# Config is params.yaml (or --configfile presets/X.yaml on top of it), validated like every stage's
# params. Rules live in workflow/rules, their helpers in workflow/rules/common.smk; each rule reruns
# when a param its stage lists in dvc.yaml or a pipeline/ module its command imports changes.

configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/enhance.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        all_outputs(),

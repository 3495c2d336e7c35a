# The same DAG as dvc.yaml, for clusters:  snakemake --cores 8 --profile slurm
# Config is params.yaml (or --configfile presets/X.yaml on top of it); rules live in workflow/rules.

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

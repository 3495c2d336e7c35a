# Helpers shared by the rules.
#
# The config (params.yaml, then any --configfile and --config on top) is validated with the schema of
# pipeline/data/params.py, as every stage CLI validates its params file: a typo stops the workflow before any
# job, with the same one-line error. The resolved params are written once and passed to every command.
#
# What reruns a job, as under `dvc repro` (see the header of dvc.yaml):
# - params: each rule's `params: values=stage_params(...)` holds the values of the params its stage
#   lists in dvc.yaml, so changing one reruns exactly the rules that read it (Snakemake's params trigger);
# - code: each rule's `input: code=code_deps(...)` holds its script and every pipeline/ module the
#   script imports (pipeline/dag/stage_deps.py), so editing a module reruns the rules that import it.

import json
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # this checkout's pipeline package, installed or not

from pipeline.dag import stage_deps
from pipeline.core.params import ParamsError, read_yaml, to_yaml
from pipeline.data.params import validate
from pipeline.core.pipeline_run import mark_execution
from pipeline.labels.plan import label_plan

mark_execution()  # PSLA_PIPELINE_ID: every job (SLURM's too) nests its MLflow run under this execution's parent


def _shown(path):
    path = Path(path)
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _validated_params():
    """The merged config, validated; on a problem, the stage CLIs' `error: FILE: key: ...` and exit status 2.

    The error names the config file the offending key is in, when that file alone shows it."""
    given = [Path(f).absolute() for f in workflow.config_settings.configfiles]
    files = [Path(f) for f in workflow.configfiles if Path(f).absolute() not in given] + given
    source = " + ".join(_shown(f) for f in files) + (" + --config" if workflow.config_settings.config else "")
    try:
        return validate(dict(config), source)
    except ParamsError as err:
        problem = str(err).removeprefix(f"{source}: ")
        for path in reversed(files):
            try:
                validate(read_yaml(path), _shown(path))
            except ParamsError as alone:
                if str(alone).removeprefix(f"{_shown(path)}: ") == problem:
                    err = alone
                    break
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


RESOLVED = _validated_params()
config.update(RESOLVED.model_dump(mode="json"))  # defaults filled in, e.g. data.shards: 4 -> [0, 1, 2, 3]

ROOT = RESOLVED.data.root
SPLITS = RESOLVED.data.splits
SHARDS = RESOLVED.data.shards
SEEDS = RESOLVED.train.seeds
EVAL_SPLITS = RESOLVED.evaluate.splits
PARAMS = ".snakemake/psla-params.yaml"

Path(PARAMS).parent.mkdir(exist_ok=True)
_resolved = to_yaml(RESOLVED)
if not Path(PARAMS).is_file() or Path(PARAMS).read_text() != _resolved:
    Path(PARAMS).write_text(_resolved)

# dvc.yaml's stages: the module each command runs and the params each lists (rule name = stage name).
STAGES = stage_deps.stages(Path(workflow.basedir) / "dvc.yaml")


def stage_params(stage):
    """The values of the params `stage` lists in dvc.yaml, for Snakemake's params trigger: one JSON text,
    returned by a function so that Snakemake does not read its braces as wildcards."""
    values = {}
    for key in STAGES[stage]["params"]:
        node = config
        for part in key.split("."):
            node = node[part]
        values[key] = node
    text = json.dumps(values, sort_keys=True)
    return lambda wildcards: text


def code_deps(stage):
    """The script of `stage` and every pipeline/ module it imports, computed from the code now."""
    return stage_deps.code_deps(STAGES[stage]["module"], Path(workflow.basedir))


LABEL_PLAN = label_plan(RESOLVED)  # teacher, enhance and relabel run only when LABEL_PLAN.enhance
WEIGHTS_MANIFEST = {"original": "train.csv", "enhanced": "train_enhanced.csv"}


def training_inputs(wildcards):
    """The seeds' training features and weights: enhanced labels, or the original ones when the plan has no
    enhancement (then the teacher, enhance and relabel rules are not requested at all)."""
    return LABEL_PLAN.training_inputs(ROOT)


def all_outputs():
    return [
        *expand(f"{ROOT}/features/{{split}}.h5", split=SPLITS),
        f"{ROOT}/features/stats.json",
        *expand("plots/train/seed-{seed}.csv", seed=SEEDS),
        "metrics/eval.json",
    ]

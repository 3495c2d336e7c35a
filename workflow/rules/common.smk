# Helpers shared by the rules. The stage CLIs read a params file, so the merged Snakemake config
# (params.yaml plus any --configfile/--config) is written once and passed to every command.

import yaml
from pathlib import Path

ROOT = config["data"]["root"]
SPLITS = config["data"]["splits"]
SHARDS = config["data"]["shards"]
PARAMS = ".snakemake/psla-params.yaml"

Path(PARAMS).parent.mkdir(exist_ok=True)
_resolved = yaml.safe_dump(config, sort_keys=False)
if not Path(PARAMS).is_file() or Path(PARAMS).read_text() != _resolved:
    Path(PARAMS).write_text(_resolved)


ENHANCED = config["labels"]["enhance"] != "none"
WEIGHTS_MANIFEST = {"original": "train.csv", "enhanced": "train_enhanced.csv"}


def training_inputs(wildcards):
    """The seeds train on the enhanced labels, or on the original ones when labels.enhance is none
    (then no teacher is trained at all)."""
    if ENHANCED:
        return {"train": f"{ROOT}/features/train_enhanced.h5", "weights": f"{ROOT}/weights/enhanced.csv"}
    return {"train": f"{ROOT}/features/train.h5", "weights": f"{ROOT}/weights/original.csv"}


def all_outputs():
    return [
        *expand(f"{ROOT}/features/{{split}}.h5", split=SPLITS),
        f"{ROOT}/features/stats.json",
        *expand("plots/train/seed-{seed}.csv", seed=config["train"]["seeds"]),
        "metrics/eval.json",
    ]

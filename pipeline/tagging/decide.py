"""Per-class thresholds for `psla tag --decide` and `--events`: from the evaluate stage's
`metrics/thresholds.json` (`--thresholds`), from an exported model that carries its own, or one value
for every class (`--threshold`); anything else is a one-line error that says how to get them."""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.io import file_sha256
from pipeline.core.thresholds import read_thresholds, select_thresholds

NO_THRESHOLDS = (
    "{model}: no thresholds to decide with: pass --thresholds metrics/thresholds.json (the evaluate stage "
    "writes it: dvc repro evaluate), or --threshold T (one for every class), or tag with a model exported "
    "with its thresholds (psla export --model CKPT --thresholds metrics/thresholds.json ...)"
)


def model_sha256(tagger) -> str | None:
    """The sha256 of the checkpoint the thresholds were computed for: the model file itself, or for an
    export the checkpoint it was exported from (its provenance)."""
    if tagger.kind == "checkpoint":
        return file_sha256(tagger.checkpoint)
    return (tagger.provenance or {}).get("source_sha256")


def thresholds_for(tagger, thresholds_file: str | None, threshold: float | None, rule: str) -> tuple[np.ndarray, str]:
    """`([classes] thresholds, where they come from)`."""
    classes = len(tagger.class_ids)
    if threshold is not None:
        return np.full(classes, threshold, np.float32), f"--threshold {threshold:g} for every class"
    if thresholds_file:
        digest = model_sha256(tagger)
        if digest is None:
            raise PipelineError(
                f"{tagger.checkpoint}: the export does not record the checkpoint it came from, so "
                f"{thresholds_file} cannot be matched to it; re-export it with psla export"
            )
        document = read_thresholds(thresholds_file)
        values = select_thresholds(document, thresholds_file, digest, list(tagger.class_ids), rule)
        split = document.get("split", "val") + (" (= eval)" if document.get("val_is_eval") else "")
        return np.asarray(values, np.float32), f"{thresholds_file}, rule {rule}, chosen on {split}"
    if tagger.thresholds:
        own = tagger.thresholds
        if own.get("rule") != rule:  # an export embeds the thresholds of one rule
            raise PipelineError(
                f"{tagger.checkpoint}: carries thresholds of rule {own.get('rule')} only, not {rule}; pass "
                f"--thresholds metrics/thresholds.json, or re-export it with that rule's thresholds"
            )
        values = own["values"]
        if len(values) != classes:
            raise PipelineError(
                f"{tagger.checkpoint}: its thresholds name {len(values)} classes, the model {classes}; re-export it"
            )
        split = f"{own.get('split')}{' (= eval)' if own.get('val_is_eval') else ''}"
        return np.asarray(values, np.float32), f"the model's own (rule {rule}, chosen on {split})"
    raise PipelineError(NO_THRESHOLDS.format(model=tagger.checkpoint))

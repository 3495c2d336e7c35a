"""Whether the teacher, label enhancement and relabelling happen: decided here once, from `labels.enhance`,
and read by the teacher and enhance stages (DVC) and the Snakemake rules (workflow/rules/common.smk).

With `labels.enhance: none` none of the three happens and the seeds train on the original labels. DVC's DAG
is fixed, so there the three stages keep their places: the teacher stage writes a SKIPPED marker and empty
outputs, enhance passes the manifest through unchanged and relabel copies its labels. Snakemake leaves the
three rules out of the run: the seeds' inputs are the original features and weights.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelPlan:
    enhance: bool  # a teacher is trained, the training labels enhanced and the features relabelled
    reason: str  # why not, when not

    @property
    def teacher(self) -> bool:
        return self.enhance

    @property
    def relabel(self) -> bool:
        return self.enhance

    @property
    def labels(self) -> str:
        """Which labels the seeds train on: `enhanced` or `original` (the weights file's name too)."""
        return "enhanced" if self.enhance else "original"

    def training_inputs(self, root: str) -> dict[str, str]:
        """The seeds' training features and sampling weights under the data root."""
        features = "train_enhanced.h5" if self.enhance else "train.h5"
        return {"train": f"{root}/features/{features}", "weights": f"{root}/weights/{self.labels}.csv"}


def label_plan(params) -> LabelPlan:
    if params.labels.enhance == "none":
        return LabelPlan(False, "labels.enhance is none: no teacher, no enhancement, no relabelling")
    return LabelPlan(True, "")

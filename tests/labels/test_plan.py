"""The label plan (pipeline.labels.plan): the one decision whether teacher, enhance and relabel happen,
which the teacher and enhance stages and the Snakemake rules read."""

import pytest

from pipeline.core.params import Params
from pipeline.labels.plan import label_plan
from tests.conftest import REPO


@pytest.mark.parametrize("stat", ["mean", "median", "25", "10", "5"])
def test_any_enhancement_trains_a_teacher_and_relabels(stat):
    params = Params()
    params.labels.enhance = stat
    plan = label_plan(params)
    assert plan.enhance and plan.teacher and plan.relabel and plan.reason == ""
    assert plan.training_inputs("data") == {
        "train": "data/features/train_enhanced.h5",
        "weights": "data/weights/enhanced.csv",
    }


def test_no_enhancement_means_no_teacher_and_the_original_labels():
    params = Params()
    params.labels.enhance = "none"
    plan = label_plan(params)
    assert not (plan.enhance or plan.teacher or plan.relabel)
    assert plan.reason.startswith("labels.enhance is none")
    assert plan.training_inputs("root") == {"train": "root/features/train.h5", "weights": "root/weights/original.csv"}


def test_the_orchestrators_read_the_plan_and_decide_nothing_themselves():
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert "label_plan(RESOLVED)" in common and "LABEL_PLAN.training_inputs(ROOT)" in common
    for path in [*(REPO / "workflow").rglob("*.smk"), *(REPO / "pipeline" / "stages").glob("*.py")]:
        assert 'enhance != "none"' not in path.read_text() and 'enhance == "none"' not in path.read_text(), path

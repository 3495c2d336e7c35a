"""Which thresholds `psla tag --decide/--events` uses: one value, an export's own, or none (one-line errors)."""

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.tagging.decide import thresholds_for


def _export(thresholds):
    return SimpleNamespace(kind="folder", checkpoint="exported", class_ids=("/m/a", "/m/b"), thresholds=thresholds)


def test_one_threshold_for_every_class_and_an_exports_own():
    values, origin = thresholds_for(_export(None), None, 0.25, "f1")
    assert values.tolist() == [0.25, 0.25] and origin == "--threshold 0.25 for every class"
    own = {"rule": "f1", "values": [0.1, 0.7], "split": "val", "val_is_eval": True}
    values, origin = thresholds_for(_export(own), None, None, "f1")
    np.testing.assert_allclose(values, [0.1, 0.7])
    assert origin == "the model's own (rule f1, chosen on val (= eval))"


def test_another_rule_or_class_count_or_none_is_a_one_line_error():
    own = {"rule": "f1", "values": [0.1, 0.7], "split": "val"}
    with pytest.raises(PipelineError, match="carries thresholds of rule f1 only, not precision90"):
        thresholds_for(_export(own), None, None, "precision90")
    with pytest.raises(PipelineError, match="its thresholds name 1 classes, the model 2"):
        thresholds_for(_export({"rule": "f1", "values": [0.1]}), None, None, "f1")
    with pytest.raises(PipelineError, match="no thresholds to decide with") as err:
        thresholds_for(_export(None), None, None, "f1")
    assert len(str(err.value).splitlines()) == 1

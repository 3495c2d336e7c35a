"""The thresholds file format (pipeline/core/thresholds.py): round trip, stable bytes, one-line errors."""

import hashlib
import json

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.io import file_sha256
from pipeline.core.thresholds import (
    FORMAT,
    read_thresholds,
    select_thresholds,
    thresholds_text,
    write_thresholds,
)

CLASSES = ["/m/speech", "/m/music", "/m/yodel"]
SHA = {"wa": "a" * 64, "last": "b" * 64, "other": "c" * 64}


def _document() -> dict:
    def model(sha, values):
        return {
            "checkpoints": [f"models/{sha[0]}.pt"],
            "checkpoint_sha256": [sha],
            "thresholds": {"f1": values, "precision90": [v + 0.1 for v in values]},
            "f1": [0.5, 0.25, 0.0],
            "fallback": [2],
        }

    return {
        "format": FORMAT,
        "split": "val",
        "val_is_eval": False,
        "rule": "f1",
        "rules": {"f1": "F1-optimal", "precision90": "precision at least 0.9"},
        "class_ids": CLASSES,
        "class_names": ["Speech", "Music", "Yodelling"],
        "models": {
            "seed-1/wa": model(SHA["wa"], [0.3, 0.125, 0.5]),
            "seed-1/last": model(SHA["last"], [0.2, 0.75, 0.5]),
            "seed-ensemble": {**model(SHA["wa"], [0.1, 0.1, 0.5]), "checkpoint_sha256": [SHA["wa"], None]},
        },
    }


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_round_trip_and_the_same_bytes_whatever_the_key_order(tmp_path):
    doc = _document()
    path = tmp_path / "metrics" / "thresholds.json"
    write_thresholds(path, doc)
    assert read_thresholds(path) == doc
    first = path.read_bytes()
    write_thresholds(path, doc)
    assert path.read_bytes() == first  # a rerun on the same document: byte-identical
    shuffled = {key: doc[key] for key in reversed(list(doc))}
    shuffled["models"] = {name: dict(reversed(list(m.items()))) for name, m in reversed(doc["models"].items())}
    write_thresholds(path, shuffled)
    assert path.read_bytes() == first  # keys sorted
    assert first.endswith(b"}\n") and first.decode() == thresholds_text(doc)
    assert not list(path.parent.glob(".*tmp-*"))  # atomic: no temporary left


def test_a_non_finite_value_is_not_written(tmp_path):
    doc = _document()
    doc["models"]["seed-1/wa"]["f1"][1] = float("nan")
    path = tmp_path / "thresholds.json"
    with pytest.raises(PipelineError) as err:
        write_thresholds(path, doc)
    assert _one_line(err) == f"{path}: models.seed-1/wa.f1[1] is not a finite number (NaN or inf cannot be written)"
    assert not path.exists()


def test_bad_files_are_one_line_errors_naming_the_file_and_the_fix(tmp_path):
    fix = "run the evaluate stage (dvc repro evaluate) or pass --thresholds"
    missing = tmp_path / "gone.json"
    with pytest.raises(PipelineError) as err:
        read_thresholds(missing)
    assert _one_line(err) == f"no thresholds file {missing}: {fix}"
    cases = {
        "broken.json": ('{"format": ', f"not a thresholds file (not JSON: Expecting value at line 1); {fix}"),
        "other.json": (
            json.dumps({"format": "psla-thresholds/0"}),
            f"not a thresholds file (format 'psla-thresholds/0', expected '{FORMAT}'); {fix}",
        ),
        "untagged.json": ("[1, 2]", f"not a thresholds file (no format tag, expected '{FORMAT}'); {fix}"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(PipelineError) as err:
            read_thresholds(tmp_path / name)
        assert _one_line(err) == f"{tmp_path / name}: {message}"


def test_select_finds_the_single_checkpoint_model_by_its_sha256():
    doc = _document()
    got = select_thresholds(doc, "t.json", SHA["wa"], CLASSES)
    assert got.dtype == np.float32 and got.tolist() == [np.float32(v) for v in (0.3, 0.125, 0.5)]
    np.testing.assert_array_equal(
        select_thresholds(doc, "t.json", SHA["last"], CLASSES, "precision90"), np.float32([0.3, 0.85, 0.6])
    )


def test_select_errors_are_one_line(tmp_path):
    doc = _document()
    cases = [
        (
            dict(checkpoint_sha256=SHA["other"]),
            "t.json: no thresholds for this checkpoint (sha256 cccccccccccc); the file has thresholds for "
            "seed-1/last, seed-1/wa: evaluate this model (python -m pipeline.stages.evaluate --members CKPT ..., "
            "which writes <out-dir>/thresholds.json) or pass --thresholds",
        ),
        (
            dict(class_ids=[CLASSES[0], "/m/other", CLASSES[2]]),
            "t.json: class ids differ from the model's: class 2 is '/m/music' there, the model has '/m/other'; "
            "evaluate this model with its own class list",
        ),
        (
            dict(class_ids=CLASSES[:2]),
            "t.json: thresholds for 3 classes, but the model has 2; evaluate this model with its own class list",
        ),
        (dict(rule="youden"), "t.json: no thresholds rule 'youden' (the file has f1, precision90)"),
    ]
    for change, message in cases:
        kwargs = {"checkpoint_sha256": SHA["wa"], "class_ids": CLASSES, "rule": "f1", **change}
        with pytest.raises(PipelineError) as err:
            select_thresholds(doc, "t.json", **kwargs)
        assert _one_line(err) == message
    # an ensemble that holds the checkpoint is not that checkpoint's model
    doc["models"] = {"seed-ensemble": doc["models"]["seed-ensemble"]}
    with pytest.raises(PipelineError, match="has thresholds for no single-checkpoint model: evaluate this model"):
        select_thresholds(doc, "t.json", SHA["wa"], CLASSES)


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "model.pt"
    data = bytes(range(256)) * 5000  # more than one chunk
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()

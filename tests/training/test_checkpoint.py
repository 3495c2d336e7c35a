"""The checkpoint contract: loading (whole, or the header without the state dicts) and the one
compatibility check every reader makes, with its one-line errors."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.training.checkpoint import (
    CHECKPOINT_FORMAT,
    REQUIRED_KEYS,
    STATE_KEYS,
    check_checkpoint,
    load_checkpoint,
    load_header,
    save_checkpoint,
)

OPTIONS = {"num_mel_bins": 64, "frame_shift": 20.0, "sample_frequency": 16000}


def _payload(**changes) -> dict:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)},
        "model_config": {"name": "tf_efficientnet_lite0", "heads": 4},
        "class_ids": ["/m/a", "/m/b"],
        "class_names": ["A", "B"],
        "fbank_options": OPTIONS,
        "target_length": 500,
        "norm": {"mean": -4.0, "std": 4.0},
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2, 3)}}, "param_groups": [{"lr": 1e-3}]},
        "epoch": 7,
        "fingerprint": "f00d",
    }
    return {**payload, **changes}


def test_the_header_is_the_checkpoint_without_its_state_dicts(tmp_path):
    save_checkpoint(tmp_path / "c.pt", _payload())
    whole, header = load_checkpoint(tmp_path / "c.pt"), load_header(tmp_path / "c.pt")
    assert not set(STATE_KEYS) & set(header)
    assert header == {k: v for k, v in whole.items() if k not in STATE_KEYS}
    assert header["epoch"] == 7 and header["class_names"] == ["A", "B"]
    assert not list(tmp_path.glob("*.tmp*"))  # saved atomically: no temporary file left behind


def test_header_errors_are_the_loaders(tmp_path):
    with pytest.raises(PipelineError, match="checkpoint not found"):
        load_header(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(PipelineError, match="not a checkpoint of this pipeline"):
        load_header(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match="not a readable checkpoint"):
        load_header(tmp_path / "y.pt")


def _error(*args, **kwargs) -> str:
    with pytest.raises(PipelineError) as err:
        check_checkpoint(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{args[0]}: ")
    return message


def test_one_check_for_every_reader():
    good = _payload()
    check_checkpoint("c.pt", good, "tagging")
    check_checkpoint("c.pt", good, "evaluation", class_ids=["/m/a", "/m/b"], features={"eval.h5": dict(OPTIONS)})
    check_checkpoint("c.pt", good, "evaluation", features={"old.h5": None})  # a file without options: unchecked
    check_checkpoint("c.pt", good, "weight averaging", like=_payload(epoch=8), like_path="e8.pt")

    lacking = {k: v for k, v in good.items() if k not in ("class_names", "norm")}
    assert "lacks class_names, norm, which tagging needs" in _error("c.pt", lacking, "tagging")
    assert set(REQUIRED_KEYS) <= set(good)
    assert "1 class names for 2 class ids; the checkpoint is damaged" in _error(
        "c.pt", _payload(class_names=["A"]), "tagging"
    )
    assert "the checkpoint's 2 classes differ from the 3 of data/classes.csv; evaluation needs" in _error(
        "c.pt", good, "evaluation", class_ids=["/m/a", "/m/b", "/m/c"], classes_source="data/classes.csv"
    )
    assert "other fbank options than eval.h5" in _error(
        "c.pt", good, "evaluation", features={"eval.h5": {**OPTIONS, "num_mel_bins": 128}}
    )


def test_checkpoints_combined_tensor_by_tensor_must_be_alike():
    first = _payload()
    cases = [
        (_payload(model_config={"name": "tf_efficientnet_lite0", "heads": 1}), "a different architecture ("),
        (_payload(class_ids=["/m/a", "/m/z"]), "its class ids differ from those of first.pt"),
        (_payload(model={"w": first["model"]["w"], "m": torch.tensor(3)}), "tensor 'm' is in only one"),
        (_payload(model={**first["model"], "w": torch.zeros(3, 2)}), "tensor 'w' is [3, 2] torch.float32"),
        (_payload(norm={"mean": 0.0, "std": 1.0}), "other normalisation stats than first.pt"),
    ]
    for other, message in cases:
        text = _error("other.pt", other, "weight averaging", like=first, like_path="first.pt")
        assert message in text and "weight averaging needs checkpoints of one" in text

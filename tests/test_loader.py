import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.loader import FeatureDataset, Normaliser, aligned_weights, device_batches, eval_loader, train_loader


@pytest.fixture
def features(tmp_path):
    n, t, f, c = 40, 50, 16, 5
    rng = np.random.default_rng(0)
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as h:
        h.create_dataset("fbank", data=rng.normal(-5, 3, (n, t, f)).astype(np.float16), chunks=(1, t, f))
        h["labels"] = (rng.random((n, c)) < 0.3).astype(np.uint8)
        h["n_frames"] = rng.integers(10, t + 1, n).astype(np.int32)
        h["clip_id"] = [f"clip{i}" for i in range(n)]
    return path


def _params(**train):
    return Params.model_validate(
        {"train": {"batch_size": 8, "num_workers": 2, **train}, "augment": {"freqm": 4, "timem": 10, "mixup": 0.5}}
    )


def test_items_match_the_file_and_the_handle_opens_lazily_per_process(features):
    ds = FeatureDataset(features)
    assert ds._handle is None and len(ds) == 40
    fbank, labels, frames = ds[3]
    with h5py.File(features) as h:
        assert torch.equal(fbank, torch.from_numpy(h["fbank"][3])) and fbank.dtype == torch.float16
        assert torch.equal(labels, torch.from_numpy(h["labels"][3])) and frames == h["n_frames"][3]
    assert ds._handle is not None
    clone = pickle.loads(pickle.dumps(ds))  # what a worker receives: no open handle
    assert clone._handle is None and torch.equal(clone[3][0], fbank)
    loader = eval_loader(_params(), FeatureDataset(features))
    seen = torch.cat([batch[0] for batch in loader])
    assert loader.dataset._handle is None  # only the worker processes opened the file
    with h5py.File(features) as h:
        assert torch.equal(seen, torch.from_numpy(h["fbank"][:]))


def test_training_batches_are_deterministic_for_a_seed(features):
    params, norm = _params(), Normaliser(-5.0, 3.0)
    weights = np.linspace(1, 5, 40)

    def run(seed):
        loader = train_loader(params, FeatureDataset(features), weights, seed=seed)
        return [
            (x.clone(), y.clone())
            for x, y in device_batches(loader, params, norm, "cpu", torch.Generator().manual_seed(seed))
        ]

    a, b, c = run(1), run(1), run(2)
    assert len(a) == 5 and a[0][0].shape == (8, 50, 16) and a[0][0].dtype == torch.float32
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    # mixup happened: some labels are fractional
    assert any(((y > 0) & (y < 1)).any() for _, y in a)


def test_eval_batches_are_only_normalised(features):
    params, norm = _params(num_workers=0), Normaliser(-5.0, 3.0)
    batches = list(
        device_batches(
            eval_loader(params, FeatureDataset(features)), params, norm, "cpu", torch.Generator(), train=False
        )
    )
    with h5py.File(features) as h:
        expected = (torch.from_numpy(h["fbank"][:]).float() + 5.0) / 3.0
        labels = torch.from_numpy(h["labels"][:]).float()
    assert torch.allclose(torch.cat([x for x, _ in batches]), expected)
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_unbalanced_sampling_visits_every_clip_once_per_epoch(features):
    params = Params.model_validate({"sampling": {"balanced": False}, "train": {"batch_size": 8, "num_workers": 0}})
    loader = train_loader(params, FeatureDataset(features), None, seed=0)
    assert sorted(loader.sampler) == list(range(40))


def test_weights_are_aligned_by_clip_id(features):
    ds = FeatureDataset(features)
    by_clip = {f"clip{i}": float(i) for i in range(45)}
    assert list(aligned_weights(ds, by_clip, "w.csv")) == [float(i) for i in range(40)]
    del by_clip["clip7"]
    with pytest.raises(PipelineError, match="w.csv: no weight for clip 'clip7'"):
        aligned_weights(ds, by_clip, "w.csv")


def test_missing_or_foreign_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(PipelineError, match="features file not found"):
        FeatureDataset(tmp_path / "none.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h:
        h["x"] = [1]
    with pytest.raises(PipelineError, match="not a features file"):
        FeatureDataset(tmp_path / "other.h5")
    with pytest.raises(PipelineError, match="stats not found"):
        Normaliser.from_file(tmp_path / "stats.json")
    (tmp_path / "stats.json").write_text(json.dumps({"mean": "x"}))
    with pytest.raises(PipelineError, match="numeric mean and std"):
        Normaliser.from_file(tmp_path / "stats.json")
    (tmp_path / "stats.json").write_text(json.dumps({"mean": -4.0, "std": 2.0, "source": "computed"}))
    assert Normaliser.from_file(tmp_path / "stats.json") == Normaliser(-4.0, 2.0)

import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.data.params import load_params
from pipeline.training.loader import (
    FeatureDataset,
    Normaliser,
    aligned_weights,
    device_batches,
    eval_loader,
    train_loader,
)
from tests.conftest import REPO


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


def _partner_params(prob=1.0, **train):
    return Params.model_validate(
        {
            "train": {"batch_size": 8, "num_workers": 0, **train},
            "augment": {"freqm": 0, "timem": 0, "mixup": prob, "mixup_partner": "dataset"},
        }
    )


def test_dataset_partners_are_uniform_over_the_training_split_under_the_balanced_sampler(features):
    """The official loader draws the partner with random.randint over the whole training set, not from
    the balanced distribution. Clip 0 has nearly all the sampling weight here; the partners stay uniform."""
    from scipy.stats import chisquare

    weights = np.ones(40)
    weights[0] = 1000.0
    loader = train_loader(_partner_params(), FeatureDataset(features), weights, seed=3)
    rows, partners = [], []
    for epoch in range(1, 101):
        loader.sampler.set_epoch(epoch)
        pairs = list(loader.sampler)
        rows += [r for r, _ in pairs]
        partners += [p for _, p in pairs]
    assert len(partners) == 4000 and min(partners) >= 0  # probability 1: every clip is mixed
    assert chisquare(np.bincount(partners, minlength=40)).pvalue > 0.01  # uniform: 100 each expected
    assert chisquare(np.bincount(rows, minlength=40)).pvalue < 1e-12  # the drawn clips are not
    assert np.mean(np.array(rows) == 0) > 0.9


def test_dataset_partner_items_are_read_from_the_file(features):
    from pipeline.training.loader import collate_partners

    ds = FeatureDataset(features)
    with h5py.File(features) as h:
        fbank, labels, frames = h["fbank"][:], h["labels"][:], h["n_frames"][:]
    x, y, n, (xj, yj, nj) = ds[(3, 17)]
    assert torch.equal(x, torch.from_numpy(fbank[3])) and torch.equal(xj, torch.from_numpy(fbank[17]))
    assert torch.equal(yj, torch.from_numpy(labels[17])) and (n, nj) == (frames[3], frames[17])
    assert ds[(3, -1)][3] is None  # not mixed: the partner is not read
    # a batch carries the partners of the mixed clips only, in batch order
    batch = collate_partners([ds[(3, 17)], ds[(4, -1)], ds[(5, 2)]])
    x, y, n, xj, yj, nj, mixed = batch
    assert x.shape == (3, 50, 16) and xj.shape == (2, 50, 16) and mixed.tolist() == [True, False, True]
    assert torch.equal(xj, torch.from_numpy(fbank[[17, 2]])) and torch.equal(yj, torch.from_numpy(labels[[17, 2]]))
    assert nj.tolist() == frames[[17, 2]].tolist()
    assert collate_partners([ds[(4, -1)]])[3].shape == (0, 50, 16)
    # half the clips mixed at probability 0.5; the batches are deterministic for a seed and mix labels
    params = _partner_params(0.5)
    loader = train_loader(params, FeatureDataset(features), np.ones(40), seed=1, num_samples=4000)
    assert 0.45 < np.mean([p >= 0 for _, p in loader.sampler]) < 0.55

    def run(seed):
        loader = train_loader(params, FeatureDataset(features), np.ones(40), seed=seed)
        return [y for _, y in device_batches(loader, params, Normaliser(0, 1), "cpu", torch.Generator().manual_seed(1))]

    first, again = run(1), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(((y > 0) & (y < 1)).any() for y in first)


def test_batch_size_is_the_global_batch_over_the_processes(features):
    params = _params(num_workers=0)
    single = train_loader(params, FeatureDataset(features), np.ones(40), seed=0)
    shares = [train_loader(params, FeatureDataset(features), np.ones(40), seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert single.batch_size == 8 and [s.batch_size for s in shares] == [4, 4]
    assert len(shares[0]) == len(shares[1]) == len(single)  # the same number of steps per epoch
    together = [i for pair in zip(*(list(s.sampler) for s in shares)) for i in pair]
    assert together == list(single.sampler)
    with pytest.raises(PipelineError, match="train.batch_size \\(8\\) is the global batch"):
        train_loader(params, FeatureDataset(features), np.ones(40), seed=0, rank=0, world_size=3)
    # dataset partners are shared the same way: the ranks' pairs together are the single process's
    params = _partner_params(0.5)
    single = list(train_loader(params, FeatureDataset(features), np.ones(40), seed=0).sampler)
    shares = [
        list(train_loader(params, FeatureDataset(features), np.ones(40), seed=0, rank=r, world_size=2).sampler)
        for r in (0, 1)
    ]
    assert [p for pair in zip(*shares) for p in pair] == single


def test_paper_normalisation_is_the_official_formula(features, tmp_path):
    """The official loader: (fbank - mean) / std with mean -4.6476, std 4.5699 (no factor of 2), after
    SpecAugment and for evaluation too; the stats stage writes those constants for features.norm: paper."""
    from pipeline.stages import stats

    for preset in ("audioset_balanced", "audioset_full", "fsd50k"):
        params = load_params(REPO / "presets" / f"{preset}.yaml")
        assert (params.features.norm, params.features.paper_mean, params.features.paper_std) == (
            "paper",
            -4.6476,
            4.5699,
        )
    stats.main(
        [
            "--params",
            str(REPO / "presets" / "fsd50k.yaml"),
            "--set",
            "tracking.enabled=false",
            "--features",
            str(features),
            "--out",
            str(tmp_path / "stats.json"),
        ]
    )
    norm = Normaliser.from_file(tmp_path / "stats.json")
    assert (norm.mean, norm.std) == (-4.6476, 4.5699)
    params = _params(num_workers=0)
    (x, _), *_ = device_batches(
        eval_loader(params, FeatureDataset(features)), params, norm, "cpu", torch.Generator(), train=False
    )
    with h5py.File(features) as h:
        raw = torch.from_numpy(h["fbank"][:8]).float()
    assert torch.allclose(x, (raw - -4.6476) / 4.5699, rtol=0, atol=1e-6)

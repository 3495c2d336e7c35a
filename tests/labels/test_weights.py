"""Balanced-sampling weights (fidelity vs the paper's output) and the DDP-aware samplers."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.data.classes import ClassList
from pipeline.data.manifest import Entry, read_manifest
from pipeline.labels.weights import label_matrix, read_weights, sample_weights, weights_by_clip, write_weights
from pipeline.training.sampler import BalancedSampler, ShuffleSampler, make_sampler
from tests.conftest import AUDIOSET_META, LABEL_FIXTURE, run_module, write_params

FIXTURE = LABEL_FIXTURE
AUDIOSET_CLASSES = AUDIOSET_META / "class_labels_indices.csv"


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def naive_weights(entries, mids):
    """The paper's two loops, written out plainly: an independent check of the vectorised code."""
    count = dict.fromkeys(mids, 0)
    for e in entries:
        for label in set(e.labels):
            count[label] += 1
    return np.array([sum(1000.0 / (count[label] + 0.01) for label in set(e.labels)) for e in entries])


# ---------------------------------------------------------------------------------------------
# Weights


def test_weights_stage_matches_official(tmp_path, store_uri):
    params = write_params(tmp_path / "params.yaml", {"tracking": {"uri": store_uri}})
    out = tmp_path / "weights.csv"
    proc = run_module(
        "pipeline.stages.weights",
        "--params",
        str(params),
        "--manifest",
        str(FIXTURE / "labels.csv"),
        "--classes",
        str(AUDIOSET_CLASSES),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert len(proc.stdout.strip().splitlines()) == 1 and "3000 clips" in proc.stdout

    ours = read_csv(out)
    official = read_csv(FIXTURE / "official" / "sample_weights.csv")
    assert [r["clip_id"] for r in ours] == [r["clip_id"] for r in official]
    got = np.array([float(r["weight"]) for r in ours])
    want = np.array([float(r["weight"]) for r in official])
    rel = np.abs(got - want) / np.abs(want)
    print(f"max relative difference vs official: {rel.max():.3g}")
    assert rel.max() <= 1e-9

    # The library reads it back against the manifest, exactly.
    entries = read_manifest(FIXTURE / "labels.csv")
    assert np.array_equal(read_weights(out, entries), got)

    # One MLflow run with the summary metrics.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    runs = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["stage"] == "weights"
    metrics = runs[0].data.metrics
    assert metrics["clips"] == 3000 and metrics["classes_without_clips"] == 0
    assert metrics["weight_min"] == pytest.approx(got.min()) and metrics["weight_max"] == pytest.approx(got.max())
    assert metrics["weight_median"] == pytest.approx(np.median(got))


def test_weights_stage_unknown_label(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"tracking": {"enabled": False}})
    classes = tmp_path / "classes.csv"
    classes.write_text('index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B"\n')
    manifest = tmp_path / "train.csv"
    manifest.write_text('clip_id,audio,labels\nc0,a.flac,"/m/a"\nc1,b.flac,"/m/b,/m/zzz"\n')
    out = tmp_path / "weights.csv"
    proc = run_module(
        "pipeline.stages.weights",
        "--params",
        str(params),
        "--manifest",
        str(manifest),
        "--classes",
        str(classes),
        "--out",
        str(out),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(manifest) in lines[0] and "line 3" in lines[0] and "c1" in lines[0] and "/m/zzz" in lines[0]
    assert str(classes) in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".*tmp-*"))


def test_sample_weights_equal_plain_loops_across_chunks():
    rng = np.random.default_rng(0)
    mids = [f"/m/{k}" for k in range(37)]
    entries = []
    for i in range(1000):
        picks = rng.choice(37, size=rng.integers(0, 5), replace=False, p=np.arange(37, 0, -1) / 703)
        entries.append(Entry(f"c{i}", "", tuple(mids[k] for k in picks)))
    labels = label_matrix(entries, ClassList(tuple(mids), tuple(mids)))
    assert labels.dtype == np.uint8 and labels.shape == (1000, 37)
    want = naive_weights(entries, mids)
    for chunk in (7, 64, 10_000):
        got = sample_weights(labels, chunk_rows=chunk)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert np.array_equal(sample_weights(labels.astype(bool)), sample_weights(labels))
    assert (sample_weights(labels)[labels.sum(1) == 0] == 0).all()  # unlabelled clips are never drawn


def test_weights_file_round_trip_and_mismatch(tmp_path):
    rng = np.random.default_rng(1)
    weights = rng.random(50) * 10.0 ** rng.integers(-12, 12, size=50)
    entries = [Entry(f"clip,{i}" if i == 3 else f"c{i}", "", ()) for i in range(50)]  # a comma is quoted
    path = tmp_path / "w.csv"
    write_weights(path, [e.clip_id for e in entries], weights)
    assert np.array_equal(read_weights(path, entries), weights)  # repr floats: bit-exact
    assert weights_by_clip(path) == {e.clip_id: w for e, w in zip(entries, weights.tolist())}

    shuffled = entries[:10] + [entries[11], entries[10]] + entries[12:]
    with pytest.raises(PipelineError, match=r"line 12: clip 'c10' where the manifest has 'c11'") as err:
        read_weights(path, shuffled)
    assert "\n" not in str(err.value)
    with pytest.raises(PipelineError, match="50 clips but the manifest has 49"):
        read_weights(path, entries[:49])


def test_label_matrix_unknown_label_message():
    entries = [Entry("a", "", ("/m/x",)), Entry("b", "", ("/m/nope",))]
    with pytest.raises(PipelineError) as err:
        label_matrix(entries, ClassList(("/m/x",), ("X",)), source="train.csv", classes_source="classes.csv")
    message = str(err.value)
    assert "train.csv line 3" in message and "clip b" in message and "classes.csv" in message and "\n" not in message


# ---------------------------------------------------------------------------------------------
# Balance on a long-tailed fixture


def long_tailed_labels(multi_label: bool, classes: int = 20, seed: int = 0) -> np.ndarray:
    """Class k is the main label of ~1000/(k+1)^1.5 clips. Multi-label: 30% of clips also carry a
    second class drawn from the same long-tailed distribution (as AudioSet's tail clips often also
    carry Speech or Music), which limits how balanced any per-clip weighting can be."""
    rng = np.random.default_rng(seed)
    sizes = np.array([max(1, round(1000 / (k + 1) ** 1.5)) for k in range(classes)])
    rows = np.zeros((sizes.sum(), classes), np.uint8)
    rows[np.arange(len(rows)), np.repeat(np.arange(classes), sizes)] = 1
    if multi_label:
        extra = np.flatnonzero(rng.random(len(rows)) < 0.3)
        rows[extra, rng.choice(classes, size=len(extra), p=sizes / sizes.sum())] = 1
    return rows


def class_draw_cv(sampler, labels, epochs: int) -> float:
    counts = np.zeros(labels.shape[1], np.int64)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        counts += labels[np.fromiter(sampler, np.int64)].sum(axis=0, dtype=np.int64)
    return float(counts.std() / counts.mean())


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_balanced_sampler_flattens_long_tail(multi_label):
    labels = long_tailed_labels(multi_label)
    weights = sample_weights(labels)
    balanced = class_draw_cv(BalancedSampler(weights, seed=3), labels, epochs=5)
    shuffled = class_draw_cv(ShuffleSampler(len(labels), seed=3), labels, epochs=5)
    counts = labels.sum(0)
    print(
        f"{'multi' if multi_label else 'single'}-label, {len(labels)} clips, "
        f"class sizes {counts.max()}..{counts.min()}: "
        f"CV of per-class draws balanced {balanced:.3f} vs shuffle {shuffled:.3f} (ratio {balanced / shuffled:.3f})"
    )
    assert balanced / shuffled < (0.1 if not multi_label else 0.5)


# ---------------------------------------------------------------------------------------------
# DDP, determinism, resume


def make(kind, n, seed, rank, world_size, num_samples=None):
    if kind == "balanced":
        weights = np.random.default_rng(5).random(n) + 0.01
        return BalancedSampler(weights, num_samples=num_samples, seed=seed, rank=rank, world_size=world_size)
    return ShuffleSampler(n, seed=seed, rank=rank, world_size=world_size)


@pytest.mark.parametrize("kind", ["balanced", "shuffle"])
@pytest.mark.parametrize("n", [1000, 1001])
def test_ranks_share_the_single_process_sequence(kind, n):
    single = make(kind, n, seed=7, rank=0, world_size=1)
    ranks = [make(kind, n, seed=7, rank=r, world_size=2) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(4)
    whole = list(single)
    shares = [list(r) for r in ranks]
    assert len(whole) == len(single) == n
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(ranks[1]) == math.ceil(n / 2)
    # Strided by position: interleaving the shares gives the single-process sequence (+ wrap-around pad).
    interleaved = [i for pair in zip(*shares) for i in pair]
    assert interleaved[:n] == whole
    assert interleaved[n:] == whole[: len(interleaved) - n]
    if kind == "shuffle":
        assert sorted(whole) == list(range(n))
        if n % 2 == 0:  # each index exactly once per epoch across ranks
            assert sorted(shares[0] + shares[1]) == list(range(n))
            assert not set(shares[0]) & set(shares[1])


@pytest.mark.parametrize("kind", ["balanced", "shuffle"])
def test_deterministic_per_seed_and_epoch(kind):
    a, b = make(kind, 500, seed=1, rank=1, world_size=3), make(kind, 500, seed=1, rank=1, world_size=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b) == list(a)  # same seed + epoch reproduce, also on a second pass
    b.set_epoch(3)
    assert list(a) != list(b)
    c = make(kind, 500, seed=2, rank=1, world_size=3)
    c.set_epoch(2)
    assert list(a) != list(c)


@pytest.mark.parametrize("kind", ["balanced", "shuffle"])
def test_state_dict_resume(kind):
    run = make(kind, 300, seed=11, rank=0, world_size=2)
    sequence = []
    for epoch in range(6):
        run.set_epoch(epoch)
        sequence.append(list(run))

    first = make(kind, 300, seed=11, rank=0, world_size=2)
    first.set_epoch(2)
    saved = first.state_dict()
    assert saved["epoch"] == 2 and saved["seed"] == 11
    resumed = make(kind, 300, seed=999, rank=0, world_size=2)  # the checkpoint's seed wins
    resumed.load_state_dict(saved)
    assert list(resumed) == sequence[2]
    for epoch in range(3, 6):
        resumed.set_epoch(epoch)
        assert list(resumed) == sequence[epoch]

    other = make("shuffle" if kind == "balanced" else "balanced", 300, seed=11, rank=0, world_size=2)
    with pytest.raises(ValueError, match="sampler state is for"):
        other.load_state_dict(saved)


def test_balanced_sampler_semantics():
    # Zero-weight clips are never drawn; num_samples may differ from the number of clips.
    weights = np.array([0.0, 1.0, 3.0, 0.0])
    sampler = BalancedSampler(weights, num_samples=20_000, seed=0)
    drawn = np.bincount(np.fromiter(sampler, np.int64), minlength=4)
    assert len(sampler) == 20_000 and drawn[0] == drawn[3] == 0
    assert drawn[2] / drawn[1] == pytest.approx(3.0, rel=0.1)
    with pytest.raises(ValueError):
        BalancedSampler(np.zeros(3))
    with pytest.raises(ValueError):
        BalancedSampler(np.ones(3), rank=2, world_size=2)


def test_make_sampler_follows_params():
    from pipeline.core.params import Params

    params = Params()
    weights = np.ones(10)
    assert params.sampling.balanced and isinstance(make_sampler(params, weights, seed=1), BalancedSampler)
    params.sampling.balanced = False
    sampler = make_sampler(params, weights, rank=1, world_size=2, seed=1)
    assert isinstance(sampler, ShuffleSampler) and len(sampler) == 5 and sampler.rank == 1
    assert isinstance(make_sampler(params, 10), ShuffleSampler)

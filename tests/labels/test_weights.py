"""Balanced-sampling weights (pipeline.labels.weights): fidelity to the paper's output, chunking, the file."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.data.classes import ClassList
from pipeline.data.manifest import Entry, read_manifest
from pipeline.labels.weights import label_matrix, read_weights, sample_weights, weights_by_clip, write_weights
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

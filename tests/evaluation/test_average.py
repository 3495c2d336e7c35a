"""Weight averaging and BatchNorm re-estimation on a tiny trained run (2 seeds x 2 epochs of the tiny preset).

The runs are built once per test session and shared with tests/evaluation/test_evaluate.py (under pytest-xdist,
by the workers too: the first one builds them under a lock, the others reuse them).
"""

import fcntl
import os
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_write_json
from pipeline.data.classes import read_classes, write_classes
from pipeline.data.manifest import write_manifest
from pipeline.data.params import load_params
from pipeline.data.prepare import prepare_split
from pipeline.data.registry import class_metadata, list_split
from pipeline.evaluation.average import (
    average_checkpoints,
    batchnorm_layers,
    reestimate_payload_batchnorm,
    running_statistic_names,
    select_epochs,
    state_differences,
)
from pipeline.features.features import extract_features, normalisation_stats
from pipeline.labels.weights import label_matrix, sample_weights, weights_by_clip, write_weights
from pipeline.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.training.loader import Normaliser
from pipeline.training.model import create_model
from pipeline.training.predict import predict
from pipeline.training.train import Inputs, train
from tests.conftest import REPO

TINY = REPO / "presets" / "tiny.yaml"
SEEDS = (1, 2)


def tiny_params(root, *overrides):
    return load_params(TINY, [f"data.root={root}", "tracking.enabled=false", *overrides])


def _build(root):
    """Tiny demo data (train, val, eval features; stats; weights), runs seed-1 and seed-2 (2 epochs each),
    and their weight averages (epochs 1..2) in models/wa/seed-<k>.pt."""
    data = root / "data"
    params = tiny_params(data)
    classes, _ = class_metadata(params)
    write_classes(data / "classes.csv", classes)
    for split in ("train", "val", "eval"):
        manifest, _ = prepare_split(
            list_split(params, split, classes),
            dataset="demo",
            audio_dir=data / "audio" / split,
            root=data,
            on_bad="fail",
            progress=False,
        )
        write_manifest(data / "manifests" / f"{split}.csv", manifest)
        extract_features(
            manifest,
            split=split,
            data_root=data,
            out=data / "features" / f"{split}.h5",
            cfg=params.features,
            classes=classes,
            on_bad="fail",
            progress=False,
        )
        if split == "train":
            write_weights(
                data / "weights.csv", [e.clip_id for e in manifest], sample_weights(label_matrix(manifest, classes))
            )
    atomic_write_json(
        data / "features" / "stats.json", {**normalisation_stats(data / "features" / "train.h5"), "source": "computed"}
    )
    inputs = Inputs(
        data / "features" / "train.h5",
        data / "features" / "val.h5",
        weights_by_clip(data / "weights.csv"),
        Normaliser.from_file(data / "features" / "stats.json"),
        read_classes(data / "classes.csv"),
    )
    for seed in SEEDS:
        run_dir = root / "models" / f"seed-{seed}"
        train(params, inputs, run_dir, seed=seed, progress=False)
        save_checkpoint(root / "models" / "wa" / f"seed-{seed}.pt", average_checkpoints(select_epochs(run_dir, 1, 2)))


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The folder holding data/ and models/ (read-only for the tests)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "tiny-trained-runs"
    with open(shared / "tiny-trained-runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            _build(root)
            (root / "complete").touch()
    return root


def _run(trained, seed=1):
    return trained / "models" / f"seed-{seed}"


def test_select_epochs_and_a_missing_epoch(trained):
    run = _run(trained)
    assert [p.name for p in select_epochs(run, 1, 2)] == ["epoch_001.pt", "epoch_002.pt"]
    assert [p.name for p in select_epochs(run, 2, 2)] == ["epoch_002.pt"]
    with pytest.raises(PipelineError) as err:
        select_epochs(run, 2, 3)
    message = str(err.value)
    assert "epoch_003.pt: missing" in message and "epochs 1..2" in message
    assert "average.wa_start/wa_end" in message and "\n" not in message
    with pytest.raises(PipelineError, match="run folder not found"):
        select_epochs(trained / "models" / "seed-9", 1, 2)


def test_average_of_one_checkpoint_is_that_checkpoint(trained):
    path = _run(trained) / "epoch_001.pt"
    original = load_checkpoint(path)
    averaged = average_checkpoints([path])
    assert averaged["model"].keys() == original["model"].keys()
    for name, tensor in original["model"].items():
        assert torch.equal(averaged["model"][name], tensor) and averaged["model"][name].dtype == tensor.dtype, name
    assert averaged["averaged_epochs"] == [1] and averaged["averaged_from"] == ["epoch_001.pt"]
    assert "optimizer" not in averaged and averaged["class_ids"] == original["class_ids"]
    assert averaged["norm"] == original["norm"] and averaged["model_config"] == original["model_config"]


def test_average_of_two_is_their_mean_tensor_by_tensor(trained):
    paths = [_run(trained) / "epoch_001.pt", _run(trained) / "epoch_002.pt"]
    a, b = (load_checkpoint(p)["model"] for p in paths)
    averaged = average_checkpoints(paths)
    assert averaged["averaged_epochs"] == [1, 2]
    moved = 0
    for name, tensor in averaged["model"].items():
        if tensor.is_floating_point():
            expected = ((a[name].double() + b[name].double()) / 2).to(a[name].dtype)
            moved += not torch.equal(a[name], b[name])
        else:  # num_batches_tracked: the last checkpoint's
            expected = b[name]
        assert torch.equal(tensor, expected) and tensor.dtype == a[name].dtype, name
    assert moved > 10  # training changed the weights, so the mean is a new point


def test_the_averaged_checkpoint_loads_and_predicts(trained):
    payload = load_checkpoint(trained / "models" / "wa" / "seed-1.pt")
    model = model_from_checkpoint(payload)
    scores, labels = predict(
        model,
        tiny_params(trained / "data"),
        trained / "data" / "features" / "eval.h5",
        Normaliser(**payload["norm"]),
        torch.device("cpu"),
    )
    assert scores.shape == labels.shape == (8, 17) and ((scores > 0) & (scores < 1)).all()


def test_batchnorm_reestimation_changes_only_running_statistics(trained):
    data = trained / "data"
    params = tiny_params(data, "average.bn_batches=2")
    payload = load_checkpoint(trained / "models" / "wa" / "seed-1.pt")
    weights = weights_by_clip(data / "weights.csv")
    redone = reestimate_payload_batchnorm(payload, params, data / "features" / "train.h5", weights, torch.device("cpu"))
    model = model_from_checkpoint(payload)
    statistics = running_statistic_names(model)
    assert statistics and redone["bn_reestimated_batches"] == 2
    changed = set(state_differences(payload["model"], redone["model"]))
    assert changed and changed <= statistics  # only running statistics moved ...
    assert any(name.endswith("running_mean") for name in changed)
    assert any(name.endswith("running_var") for name in changed)
    for name, _ in model.named_parameters():  # ... and every weight is the same
        assert torch.equal(payload["model"][name], redone["model"][name]), name
    tracked = {k: v for k, v in redone["model"].items() if k.endswith("num_batches_tracked")}
    assert tracked and all(int(v) == 2 for v in tracked.values())  # a cumulative average over 2 batches
    again = reestimate_payload_batchnorm(payload, params, data / "features" / "train.h5", weights, torch.device("cpu"))
    assert not state_differences(redone["model"], again["model"])  # the batches are drawn reproducibly
    reloaded = model_from_checkpoint(redone)
    assert all(m.momentum == 0.1 for m in batchnorm_layers(reloaded))  # momentum restored, not saved as None
    with pytest.raises(PipelineError, match="sampling.balanced is true: pass --weights"):
        reestimate_payload_batchnorm(payload, params, data / "features" / "train.h5", None, torch.device("cpu"))


def test_average_rejects_other_architectures_classes_and_repeats(trained, tmp_path):
    first, second = _run(trained) / "epoch_001.pt", _run(trained) / "epoch_002.pt"
    payload = load_checkpoint(first)
    other = {**payload, "model_config": {**payload["model_config"], "heads": 1}, "epoch": 99}
    other["model"] = create_model(tiny_params(trained).model.model_copy(update={"heads": 1}), 17).state_dict()
    save_checkpoint(tmp_path / "heads1.pt", other)
    with pytest.raises(PipelineError) as err:
        average_checkpoints([first, tmp_path / "heads1.pt"])
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'heads1.pt'}: a different architecture") and "\n" not in message
    assert "1 heads" in message and "4 heads" in message

    renamed = {**payload, "class_ids": ["/m/other", *payload["class_ids"][1:]], "epoch": 7}
    save_checkpoint(tmp_path / "classes.pt", renamed)
    with pytest.raises(PipelineError, match=r"classes.pt: its class ids differ"):
        average_checkpoints([first, tmp_path / "classes.pt"])
    with pytest.raises(PipelineError, match="listed twice"):
        average_checkpoints([first, second, first])
    with pytest.raises(PipelineError, match="the same epoch 2 of the same run as .*epoch_002.pt"):
        average_checkpoints([second, _run(trained) / "last.pt"])
    with pytest.raises(PipelineError, match="already a weight average"):
        average_checkpoints([trained / "models" / "wa" / "seed-1.pt"])


def test_average_stage_with_batchnorm_reestimation(trained, tmp_path, store_uri, capsys):
    from pipeline.stages.average import main

    data = trained / "data"
    common = ["--params", str(TINY), "--set", f"data.root={data}", "--set", f"tracking.uri={store_uri}"]
    out = tmp_path / "wa" / "seed-2.pt"
    main(
        [
            *common,
            "--set",
            "average.bn_batches=2",
            "--run",
            str(_run(trained, 2)),
            "--out",
            str(out),
            "--train-features",
            str(data / "features" / "train.h5"),
            "--weights",
            str(data / "weights.csv"),
        ]
    )
    printed = capsys.readouterr().out
    assert "seed 2: averaged epochs 1..2 (2 checkpoints), BatchNorm statistics re-estimated on 2" in printed
    payload = load_checkpoint(out)
    assert payload["averaged_epochs"] == [1, 2] and payload["bn_reestimated_batches"] == 2 and payload["seed"] == 2
    plain = load_checkpoint(trained / "models" / "wa" / "seed-2.pt")
    changed = state_differences(plain["model"], payload["model"])
    assert changed and set(changed) <= running_statistic_names(model_from_checkpoint(payload))
    client = MlflowClient(store_uri)
    [run] = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    assert run.data.tags["stage"] == "average" and run.data.tags["seed"] == "2"
    assert run.data.metrics["members"] == 2

    with pytest.raises(SystemExit) as exit_:
        main([*common, "--set", "average.bn_batches=2", "--run", str(_run(trained)), "--out", str(tmp_path / "x.pt")])
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and len(stderr.strip().splitlines()) == 1 and not (tmp_path / "x.pt").exists()
    assert stderr.startswith("error: average.bn_batches=2: pass --train-features")

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
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
from pipeline.features.features import extract_features, normalisation_stats
from pipeline.labels.weights import label_matrix, sample_weights, weights_by_clip, write_weights
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.loader import Normaliser
from pipeline.training.train import Inputs, learning_rate, train
from tests.conftest import REPO, run_module

TINY = REPO / "presets" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """The tiny demo prepared, featurised, with stats and weights: what the train stage reads."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    params = load_params(TINY, [f"data.root={root}", "tracking.enabled=false"])
    classes, _ = class_metadata(params)
    write_classes(root / "classes.csv", classes)
    for split in ("train", "val"):
        manifest, _ = prepare_split(
            list_split(params, split, classes),
            dataset="demo",
            audio_dir=root / "audio" / split,
            root=root,
            on_bad="fail",
            progress=False,
        )
        write_manifest(root / f"{split}.csv", manifest)
        extract_features(
            manifest,
            split=split,
            data_root=root,
            out=root / f"{split}.h5",
            cfg=params.features,
            classes=classes,
            on_bad="fail",
            progress=False,
        )
        if split == "train":
            write_weights(
                root / "weights.csv", [e.clip_id for e in manifest], sample_weights(label_matrix(manifest, classes))
            )
    atomic_write_json(root / "stats.json", {**normalisation_stats(root / "train.h5"), "source": "computed"})
    return root


def _inputs(root):
    return Inputs(
        root / "train.h5",
        root / "val.h5",
        weights_by_clip(root / "weights.csv"),
        Normaliser.from_file(root / "stats.json"),
        read_classes(root / "classes.csv"),
    )


def _params(root, *overrides):
    return load_params(TINY, [f"data.root={root}", "tracking.enabled=false", *overrides])


def test_learning_rate_warms_up_then_drops_every_few_epochs():
    p = load_params(
        TINY,
        [
            "train.lr=1.0",
            "train.warmup_steps=10",
            "train.lr_decay_start=3",
            "train.lr_decay_every=2",
            "train.lr_decay=0.5",
            "train.epochs=9",
            "average.wa_end=9",
        ],
    )
    assert learning_rate(p, 1, 1) == pytest.approx(0.1) and learning_rate(p, 1, 5) == pytest.approx(0.5)
    assert [learning_rate(p, e, 100) for e in range(1, 10)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]


def official_learning_rates(lr, epochs, steps_per_epoch, decay_start, decay=0.5, warmup=True):
    """The official traintest.py schedule, written out: a real Adam and MultiStepLR (milestones every
    5 epochs from decay_start, stepped after each epoch); while global_step <= 1000, every 50th step
    sets the rate to global_step / 1000 x lr; global_step counts from 0. Returns each step's rate."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr, weight_decay=5e-7, betas=(0.95, 0.999))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(range(decay_start, 1000, 5)), gamma=decay)
    rates, global_step = [], 0
    for _epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            if global_step <= 1000 and global_step % 50 == 0 and warmup:
                for group in optimizer.param_groups:
                    group["lr"] = global_step / 1000 * lr
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            global_step += 1
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    "preset, steps_per_epoch, epochs",
    [
        ("audioset_balanced", 222, 6),  # 22,160 clips / 100: the warm-up spans five epochs
        ("fsd50k", 1534, 1),  # 36,796 clips / 24: the warm-up ends in the first epoch
        ("audioset_full", 230, 16),  # short epochs (a partial download): decays during the warm-up
    ],
)
def test_paper_warmup_is_the_official_sequence_step_by_step(preset, steps_per_epoch, epochs):
    p = load_params(REPO / "presets" / f"{preset}.yaml")
    if preset == "audioset_full":  # decays from epoch 2 on, every 5: at the ends of epochs 2 and 7 (steps 460, 1610)
        p = load_params(REPO / "presets" / f"{preset}.yaml", ["train.lr_decay_start=2"])
    assert (p.train.warmup, p.train.warmup_steps, p.train.lr_decay_every) == ("paper", 1000, 5)
    want = official_learning_rates(p.train.lr, epochs, steps_per_epoch, p.train.lr_decay_start, p.train.lr_decay)
    got = [
        learning_rate(p, (step - 1) // steps_per_epoch + 1, step, steps_per_epoch)
        for step in range(1, epochs * steps_per_epoch + 1)
    ]
    assert len(got) >= 1100
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert got[:50] == [0.0] * 50 and got[50] == pytest.approx(p.train.lr / 20)


def test_training_writes_checkpoints_history_and_improves(tiny_data, tmp_path):
    out = tmp_path / "run"
    best = train(
        _params(tiny_data, "train.epochs=3", "average.wa_end=3"), _inputs(tiny_data), out, seed=1, progress=False
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        *["best.pt", "curves.png", "epoch_001.pt", "epoch_002.pt", "epoch_003.pt"],
        *["history.csv", "history.timing.csv", "last.pt"],  # the timings: beside the history, ignored by git and DVC
    ]
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,lr,train_loss,val_loss,val_mAP") and len(lines) == 4
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 3 and last["class_ids"][0].startswith("/m/") and "mean" in last["norm"]
    assert set(last) >= {"model", "optimizer", "sampler", "step", "history", "model_config", "fbank_options"}
    assert load_checkpoint(out / "best.pt")["epoch"] == best["epoch"]
    history = [float(line.split(",")[3]) for line in lines[1:]]
    assert history[-1] < history[0]  # the training loss goes down


@pytest.mark.parametrize(
    "extra", [[], ["augment.mixup_partner=dataset", "augment.mixup=1.0"]], ids=["batch", "dataset"]
)
def test_interrupted_then_resumed_run_ends_with_the_same_weights(tiny_data, tmp_path, extra):
    params = _params(tiny_data, *extra)
    train(params, _inputs(tiny_data), tmp_path / "straight", seed=3, progress=False)

    resumed = tmp_path / "resumed"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.stages.train",
        "--params",
        str(TINY),
        "--set",
        f"data.root={tiny_data}",
        "--set",
        "tracking.enabled=false",
        "--train-features",
        str(tiny_data / "train.h5"),
        "--val-features",
        str(tiny_data / "val.h5"),
        "--weights",
        str(tiny_data / "weights.csv"),
        "--stats",
        str(tiny_data / "stats.json"),
        "--classes",
        str(tiny_data / "classes.csv"),
        "--out",
        str(resumed),
        "--seed",
        "3",
        "--no-progress",
        *(arg for override in extra for arg in ("--set", override)),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (resumed / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # stopped right after epoch 1's checkpoint
    proc.wait()
    assert load_checkpoint(resumed / "last.pt")["epoch"] == 1
    assert not (resumed / "epoch_002.pt").exists()

    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout and "after epoch 1" in out.stdout
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    # the history (the committed plots file is its copy) is the uninterrupted run's, byte for byte
    assert (resumed / "history.csv").read_bytes() == (tmp_path / "straight" / "history.csv").read_bytes()


def test_checkpoints_of_other_params_or_data_are_not_resumed(tiny_data, tmp_path, capsys):
    one_epoch = ["train.epochs=1", "average.wa_start=1", "average.wa_end=1"]
    train(_params(tiny_data, *one_epoch), _inputs(tiny_data), tmp_path / "r", seed=1, progress=False)
    before = load_checkpoint(tmp_path / "r" / "last.pt")["fingerprint"]
    train(_params(tiny_data, *one_epoch, "train.lr=0.5"), _inputs(tiny_data), tmp_path / "r", seed=1, progress=False)
    assert "starting over" in capsys.readouterr().out
    changed = load_checkpoint(tmp_path / "r" / "last.pt")
    assert changed["epoch"] == 1 and changed["fingerprint"] != before
    other_weights = _inputs(tiny_data)
    other_weights.weights = {clip: 1.0 for clip in other_weights.weights}  # e.g. weights of enhanced labels
    train(_params(tiny_data, *one_epoch, "train.lr=0.5"), other_weights, tmp_path / "r", seed=1, progress=False)
    assert "starting over" in capsys.readouterr().out


def test_channels_last_trains(tiny_data, tmp_path):
    best = train(
        _params(tiny_data, "train.channels_last=true", "train.epochs=1", "average.wa_start=1", "average.wa_end=1"),
        _inputs(tiny_data),
        tmp_path / "cl",
        seed=1,
        progress=False,
    )
    assert 0 <= best["val_mAP"] <= 1


def test_non_finite_loss_stops_with_the_step(tiny_data, tmp_path):
    inputs = _inputs(tiny_data)
    inputs.norm = Normaliser(0.0, 0.0)  # every input becomes inf/nan
    with pytest.raises(PipelineError, match=r"non-finite training loss .* at step 1, epoch 1"):
        train(_params(tiny_data), inputs, tmp_path / "nan", seed=1, progress=False)


def test_an_empty_training_split_is_a_one_line_error(tiny_data, tmp_path):
    inputs = _inputs(tiny_data)
    with h5py.File(inputs.train_features) as source, h5py.File(tmp_path / "empty.h5", "w") as empty:
        for name in ("fbank", "labels", "clip_id", "n_frames"):
            empty.create_dataset(name, shape=(0, *source[name].shape[1:]), dtype=source[name].dtype)
        empty.attrs.update(source.attrs)
    inputs.train_features, inputs.weights = tmp_path / "empty.h5", None
    with pytest.raises(PipelineError, match=r"empty.h5: no clips to train on \(the features stage wrote none"):
        train(_params(tiny_data), inputs, tmp_path / "run", seed=1, progress=False)


def test_train_and_predict_stages_log_to_mlflow(tiny_data, tmp_path, store_uri):
    common = [
        "--params",
        str(TINY),
        "--set",
        f"data.root={tiny_data}",
        "--set",
        f"tracking.uri={store_uri}",
        "--set",
        "train.log_every=1",
    ]
    run_module(
        "pipeline.stages.teacher",
        *common,
        "--train-features",
        str(tiny_data / "train.h5"),
        "--val-features",
        str(tiny_data / "val.h5"),
        "--weights",
        str(tiny_data / "weights.csv"),
        "--stats",
        str(tiny_data / "stats.json"),
        "--classes",
        str(tiny_data / "classes.csv"),
        "--out",
        str(tmp_path / "teacher"),
        "--seed",
        "1",
        "--no-progress",
        cwd=tmp_path,
    )
    client = MlflowClient(store_uri)
    runs = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    [run] = [r for r in runs if r.data.tags["stage"] == "train"]
    assert run.data.tags["role"] == "teacher" and run.data.tags["seed"] == "1"
    assert len(client.get_metric_history(run.info.run_id, "val_mAP")) == 2
    assert len(client.get_metric_history(run.info.run_id, "train_loss_step")) >= 4
    assert run.data.metrics["parameters"] > 1e6 and "clips_per_second" in run.data.metrics
    assert "data_wait" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"history.csv", "curves.png"}

    out = run_module(
        "pipeline.stages.predict",
        *common,
        "--checkpoint",
        str(tmp_path / "teacher" / "best.pt"),
        "--features",
        str(tiny_data / "train.h5"),
        "--out",
        str(tmp_path / "p.npz"),
        "--no-progress",
        cwd=tmp_path,
    ).stdout
    assert "24 clips ->" in out
    from pipeline.core.predictions import read_predictions

    scores, clip_ids, class_ids = read_predictions(tmp_path / "p.npz")
    assert scores.shape == (24, 17) and clip_ids[0] == "demo-train-000000" and len(class_ids) == 17
    assert ((scores > 0) & (scores < 1)).all()


def test_only_the_train_stage_imports_the_training_loop():
    """Readers of checkpoints (tagging, evaluation, averaging, prediction) import the checkpoint and
    prediction modules, never the DDP training loop."""
    importers = set()
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if "pipeline.training.train" in names:
                importers.add(path.relative_to(REPO).as_posix())
    assert {p for p in importers if not p.startswith("pipeline/training/")} == {"pipeline/stages/train.py"}


def test_foreign_checkpoint_is_a_one_line_error(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(PipelineError, match="not a checkpoint of this pipeline"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


@pytest.mark.slow
def test_ddp_two_cpu_processes_share_the_draws_and_end_identical(tiny_data, tmp_path, store_uri):
    report = tmp_path / "ranks"
    run_module(
        "pipeline.stages.train",
        "--params",
        str(TINY),
        "--set",
        f"data.root={tiny_data}",
        "--set",
        f"tracking.uri={store_uri}",
        "--set",
        "train.devices=2",
        "--set",
        "train.device=cpu",
        "--train-features",
        str(tiny_data / "train.h5"),
        "--val-features",
        str(tiny_data / "val.h5"),
        "--weights",
        str(tiny_data / "weights.csv"),
        "--stats",
        str(tiny_data / "stats.json"),
        "--classes",
        str(tiny_data / "classes.csv"),
        "--out",
        str(tmp_path / "ddp"),
        "--seed",
        "1",
        "--no-progress",
        cwd=tmp_path,
        env={"PSLA_RANK_REPORT": str(report), "OMP_NUM_THREADS": "1"},
    )
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas identical
    assert len(ranks[0]["drawn"]) == len(ranks[1]["drawn"]) == 24  # 2 epochs x 12 draws each
    epoch1 = [r["drawn"][:12] for r in ranks]
    interleaved = [i for pair in zip(*epoch1) for i in pair]
    from pipeline.training.sampler import BalancedSampler

    single = BalancedSampler(np.array(list(weights_by_clip(tiny_data / "weights.csv").values())), seed=1)
    single.set_epoch(1)
    assert interleaved == list(single)  # each rank drew its own share of one global draw
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if p.suffix == ".pt") == [
        "best.pt",
        "epoch_001.pt",
        "epoch_002.pt",
        "last.pt",
    ]
    client = MlflowClient(store_uri)
    runs = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    assert [r.data.tags["stage"] for r in runs] == ["train"]  # one run, from rank 0
    assert len((tmp_path / "ddp" / "history.csv").read_text().splitlines()) == 3


def test_no_teacher_is_trained_when_labels_are_not_enhanced(tiny_data, tmp_path):
    out = run_module(
        "pipeline.stages.teacher",
        "--params",
        str(TINY),
        "--set",
        f"data.root={tiny_data}",
        "--set",
        "tracking.enabled=false",
        "--set",
        "labels.enhance=none",
        "--train-features",
        str(tiny_data / "train.h5"),
        "--val-features",
        str(tiny_data / "val.h5"),
        "--weights",
        str(tiny_data / "weights.csv"),
        "--stats",
        str(tiny_data / "stats.json"),
        "--classes",
        str(tiny_data / "classes.csv"),
        "--out",
        str(tmp_path / "teacher"),
        "--seed",
        "0",
        "--predict-features",
        str(tiny_data / "train.h5"),
        "--predict-out",
        str(tmp_path / "p.npz"),
        cwd=tmp_path,
    ).stdout
    assert "labels.enhance is none: no teacher" in out
    assert [p.name for p in (tmp_path / "teacher").iterdir()] == ["SKIPPED"]
    from pipeline.core.predictions import read_predictions

    scores, clip_ids, class_ids = read_predictions(tmp_path / "p.npz")
    assert scores.shape == (0, 17) and clip_ids == [] and len(class_ids) == 17


@pytest.mark.parametrize("val", ["holdout", "eval"])
def test_a_teacher_validated_on_eval_scores_with_its_last_checkpoint(tiny_data, tmp_path, monkeypatch, val):
    """data.audioset.val: eval: best.pt was chosen on eval, which must not reach the enhanced labels."""
    from pipeline.stages import train as stage

    used = []
    monkeypatch.setattr(stage, "predict_file", lambda params, checkpoint, *args, **kw: used.append(Path(checkpoint)))
    stage.main(
        [
            "--params",
            str(TINY),
            *("--set", f"data.root={tiny_data}", "--set", "tracking.enabled=false", "--set", "data.dataset=audioset"),
            *("--set", f"data.audioset.val={val}", "--set", "train.epochs=1", "--set", "average.wa_start=1"),
            *("--set", "average.wa_end=1", "--no-progress"),
            *("--train-features", str(tiny_data / "train.h5"), "--val-features", str(tiny_data / "val.h5")),
            *("--weights", str(tiny_data / "weights.csv"), "--stats", str(tiny_data / "stats.json")),
            *("--classes", str(tiny_data / "classes.csv"), "--out", str(tmp_path / "teacher"), "--seed", "0"),
            *("--predict-features", str(tiny_data / "train.h5"), "--predict-out", str(tmp_path / "p.npz")),
        ],
        role="teacher",
    )
    assert [p.name for p in used] == ["last.pt" if val == "eval" else "best.pt"]

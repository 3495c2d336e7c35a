"""Importing the released PSLA models: a file in the released format (an official EffNetAttention built
from efficientnet_pytorch, random weights, saved from DataParallel) becomes one of our checkpoints whose
scores are the official model's on the official eval loader's fbanks; tag, predict, evaluate and
fine-tune work on it; anything else is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.metrics import evaluate
from pipeline.core.params import Features, Model, Params, Train
from pipeline.core.predictions import read_predictions
from pipeline.core.tracking import stage_run
from pipeline.data.classes import read_classes
from pipeline.data.manifest import Entry
from pipeline.data.params import PipelineParams, load_params
from pipeline.evaluation.evaluate import EXTRA_ENSEMBLE, MEMBERS_ENSEMBLE, Predictor, evaluate_runs, load_split
from pipeline.features.features import extract_features
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.import_psla import PAPER_FEATURES, PAPER_MODEL, import_released, paper_audioset_params
from pipeline.training.model import create_model
from tests.conftest import AUDIOSET_META, run_module, write_params
from tests.psla_reference import OfficialEffNetAttention, official_fbank, official_model, released_state

CLASSES = 3
FRAMES = 1056
ENSEMBLE_FRAMES = 128  # the ten-model ensemble's tiny inputs: the models pool over any number of frames
RELEASED_ENSEMBLE = 10  # as_mdl_0..9, the official 10-model ensemble
LABELS = [("/m/09x0r",), ("/m/05zppz",), ("/m/02zsn",), ("/m/09x0r", "/m/02zsn")]


def write_classes(path, n: int):
    rows = (AUDIOSET_META / "class_labels_indices.csv").read_text().splitlines()[: n + 1]
    path.write_text("\n".join(rows) + "\n")
    return path


def clip(seed: int) -> np.ndarray:
    """10 s of 16 kHz audio: coloured noise and a tone, different for each seed."""
    rng = np.random.default_rng(seed)
    noise = np.cumsum(rng.standard_normal(160000)) * 0.002 * (seed % 2) + rng.standard_normal(160000) * 0.02
    t = np.arange(160000) / 16000
    return (noise + 0.2 * np.sin(2 * np.pi * (300 + 400 * seed) * t)).astype(np.float32)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-format file, its import, 16-bit FLAC clips and their features file (the paper's options)."""
    root = tmp_path_factory.mktemp("released")
    official = official_model(CLASSES)
    torch.save(released_state(official), root / "as_mdl_0.pth")
    classes_csv = write_classes(root / "classes.csv", CLASSES)
    classes = read_classes(classes_csv)
    imported = root / "as_mdl_0.pt"
    save_checkpoint(imported, import_released(root / "as_mdl_0.pth", classes))
    entries = []
    for i, labels in enumerate(LABELS):
        sf.write(str(root / f"clip{i}.flac"), clip(i), 16000, subtype="PCM_16")
        entries.append(Entry(f"clip{i}", f"clip{i}.flac", labels))
    features = Features(**PAPER_FEATURES, target_length=FRAMES)
    extract_features(
        entries, split="eval", data_root=root, out=root / "eval.h5", cfg=features, classes=classes, on_bad="fail"
    )
    # the official eval loader reads the clip with torchaudio.load: 16-bit PCM / 32768, what soundfile gives
    waves = [sf.read(str(root / f"clip{i}.flac"), dtype="float32")[0] for i in range(len(LABELS))]
    with torch.no_grad():
        official_scores = official(torch.stack([official_fbank(w, FRAMES) for w in waves])).numpy()
        rounded_scores = official(torch.stack([official_fbank(w, FRAMES, float16=True) for w in waves])).numpy()
    return {
        "root": root,
        "file": root / "as_mdl_0.pth",
        "classes_csv": classes_csv,
        "classes": classes,
        "imported": imported,
        "features": root / "eval.h5",
        "official": official_scores,
        "official_float16": rounded_scores,
        # the whole pipeline's params (with the dataset plug-ins' sections): evaluate_runs reads data.validates_on_eval
        "params": PipelineParams(train=Train(num_workers=0, batch_size=4, device="cpu")),
    }


def test_imported_scores_equal_the_official_models_on_its_eval_fbanks(released, tmp_path):
    """Our features + predict on the imported file: the official model's scores on the official loader's
    fbanks, up to the float16 storage of our features (and exactly those of the official model on the
    float16-rounded fbanks)."""
    from pipeline.training.predict import predict_file

    payload = load_checkpoint(released["imported"])
    assert payload["fbank_options"]["num_mel_bins"] == 128 and payload["fbank_options"]["frame_shift"] == 10.0
    assert payload["target_length"] == FRAMES and payload["norm"] == {"mean": -4.6476, "std": 4.5699}
    assert payload["model_config"]["name"] == "tf_efficientnet_b2.aa_in1k"
    assert payload["model_config"]["padding"] == "static" and payload["model_config"]["heads"] == 4
    predict_file(released["params"], released["imported"], released["features"], tmp_path / "preds.npz")
    scores, clip_ids, class_ids = read_predictions(tmp_path / "preds.npz")
    assert clip_ids == [f"clip{i}" for i in range(len(LABELS))] and class_ids == list(released["classes"].mids)
    assert np.abs(scores - released["official_float16"]).max() <= 1e-5  # measured 2e-7
    # float16 keeps 11 significant bits of a log-mel value (about 0.01 at 10): measured 1.3e-3 here
    assert np.abs(scores - released["official"]).max() <= 5e-3
    assert np.abs(released["official"][0] - released["official"][1]).max() > 1e-2  # the clips score differently


def test_psla_tag_scores_a_clip_as_the_official_model(released, capsys):
    from pipeline.tagging.command import main

    flac = released["root"] / "clip2.flac"
    main(
        ["tag", str(flac), "--model", str(released["imported"]), "--window", "10", "--hop", "10"]
        + ["--format", "json", "--top-k", "0", "--device", "cpu", "--no-progress"]
    )
    record = json.loads(capsys.readouterr().out)["files"][0]
    got = {c["mid"]: c["max"] for c in record["classes"]}
    expected = released["official_float16"][2]
    assert record["windows"] == 1
    assert max(abs(got[mid] - expected[i]) for i, mid in enumerate(released["classes"].mids)) <= 1e-5


def test_predict_stage_and_evaluate_extra_members(released, tmp_path):
    from pipeline.stages.predict import main

    params = write_params(tmp_path / "params.yaml", {"tracking": {"enabled": False}, "train": {"num_workers": 0}})
    out = tmp_path / "preds.h5"
    main(
        [
            "--params",
            str(params),
            "--checkpoint",
            str(released["imported"]),
            "--features",
            str(released["features"]),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    scores, _, _ = read_predictions(out)
    assert np.abs(scores - released["official_float16"]).max() <= 1e-5

    # a run of our own (here: another imported model as its only epoch and its WA) + the imported model
    other = official_model(CLASSES, seed=1)
    torch.save(released_state(other), tmp_path / "other.pth")
    payload = import_released(tmp_path / "other.pth", released["classes"])
    run = tmp_path / "models" / "seed-1"
    for name in ("epoch_001.pt", "best.pt", "last.pt"):
        save_checkpoint(run / name, {**payload, "epoch": 1, "fingerprint": "f"})
    save_checkpoint(tmp_path / "wa.pt", {**payload, "averaged_epochs": [1]})
    splits = [load_split("eval", released["features"], released["classes"])]
    predictor = Predictor(released["params"], splits, released["classes"], "cpu")
    with torch.no_grad():
        result = evaluate_runs(
            released["params"],
            [run],
            [tmp_path / "wa.pt"],
            splits,
            released["classes"],
            predictor,
            [released["imported"]],
        )
    ensemble = result.entries[EXTRA_ENSEMBLE]
    assert ensemble.members == 2
    wa_scores = result.entries["seed-1/wa"].scores["eval"]
    assert np.allclose(ensemble.scores["eval"], (wa_scores + scores) / 2, atol=1e-6)


@pytest.fixture(scope="module")
def ten_released(released, tmp_path_factory):
    """Ten released-format files (the reference model with ten seeds), imported, a features file of the
    clips at ENSEMBLE_FRAMES frames, and the mean of the ten official models' scores on the official
    loader's fbanks (float16-rounded, as our features store them)."""
    root = tmp_path_factory.mktemp("ten-released")
    params = paper_audioset_params([f"features.target_length={ENSEMBLE_FRAMES}"])
    waves = [sf.read(str(released["root"] / f"clip{i}.flac"), dtype="float32")[0] for i in range(len(LABELS))]
    fbanks = torch.stack([official_fbank(w, ENSEMBLE_FRAMES, float16=True) for w in waves])
    official_scores, imported = [], []
    for seed in range(RELEASED_ENSEMBLE):
        official = official_model(CLASSES, seed=seed)
        torch.save(released_state(official), root / f"as_mdl_{seed}.pth")
        imported.append(root / "psla" / f"as_mdl_{seed}.pt")
        save_checkpoint(imported[-1], import_released(root / f"as_mdl_{seed}.pth", released["classes"], params))
        with torch.no_grad():
            official_scores.append(official(fbanks).numpy())
    entries = [Entry(f"clip{i}", f"clip{i}.flac", labels) for i, labels in enumerate(LABELS)]
    extract_features(
        entries,
        split="eval",
        data_root=released["root"],
        out=root / "features" / "eval.h5",
        cfg=params.features,
        classes=released["classes"],
        on_bad="fail",
    )
    return {"root": root, "imported": imported, "official": np.array(official_scores)}


def test_ten_imported_models_alone_give_the_mean_of_their_scores(
    released, ten_released, tmp_path, store_uri, monkeypatch
):
    """`evaluate --members` on ten imported released-format models, without training runs: each model's
    scores are the official model's, and `members-ensemble` is the mean of the ten (psla
    src/ensemble/ensemble.py, the 10-model 0.474). Standalone: the pipeline's parent run is left RUNNING,
    without metrics, and no model is registered."""
    from mlflow.tracking import MlflowClient

    from pipeline.stages.evaluate import main

    monkeypatch.setenv("PSLA_PIPELINE_ID", "test:members")  # as if inside a pipeline execution
    params = write_params(
        tmp_path / "params.yaml",
        {"tracking": {"uri": store_uri}, "train": {"num_workers": 0, "batch_size": 4, "device": "cpu"}},
    )
    with stage_run(load_params(params), "train", {"role": "seed", "seed": 1}):
        pass  # an earlier stage of the execution: the parent run exists, RUNNING
    out = tmp_path / "metrics" / "released"
    main(
        ["--params", str(params), "--set", "evaluate.splits=[eval]", "--no-progress"]
        + ["--members", *map(str, ten_released["imported"])]
        + ["--features-dir", str(ten_released["root"] / "features"), "--classes", str(released["classes_csv"])]
        + ["--out-dir", str(out), "--plots-dir", str(tmp_path / "plots"), "--predictions-dir", str(tmp_path / "pred")]
    )
    doc = json.loads((out / "eval.json").read_text())
    names = [f"member-{i}" for i in range(1, RELEASED_ENSEMBLE + 1)]
    assert list(doc) == [*names, MEMBERS_ENSEMBLE]
    assert [doc[n]["checkpoint"] for n in names] == list(map(str, ten_released["imported"]))
    assert doc[MEMBERS_ENSEMBLE]["members"] == RELEASED_ENSEMBLE
    assert doc[MEMBERS_ENSEMBLE]["parameters"] == RELEASED_ENSEMBLE * doc["member-1"]["parameters"]

    members = np.array([read_predictions(tmp_path / "pred" / "eval" / f"{n}.npz")[0] for n in names])
    # each is its official model (measured: 1.4e-5 at most over the ten seeds)
    assert np.abs(members - ten_released["official"]).max() <= 1e-4
    assert np.abs(members[0] - members[1]).max() > 1e-3  # ten different models
    ensemble, _, _ = read_predictions(tmp_path / "pred" / "eval" / f"{MEMBERS_ENSEMBLE}.npz")
    np.testing.assert_allclose(ensemble, members.astype(np.float64).mean(axis=0), rtol=0, atol=1e-7)
    assert np.abs(ensemble - ten_released["official"].mean(axis=0)).max() <= 1e-4
    labels = np.array([[mid in row for mid in released["classes"].mids] for row in LABELS], np.uint8)
    assert doc[MEMBERS_ENSEMBLE]["mAP"] == pytest.approx(evaluate(labels, ensemble)["mAP"], abs=1e-12)
    summary = (out / "summary.txt").read_text()
    assert summary.startswith(f"headline ({MEMBERS_ENSEMBLE}):") and "member-1 (as_mdl_0.pt)" in summary
    assert (tmp_path / "plots" / "eval" / "per_class_ap.png").is_file()
    assert not (tmp_path / "plots" / "eval" / "map_per_epoch.png").exists()  # no runs, no epochs

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("psla").experiment_id
    [parent] = client.search_runs([experiment], filter_string="tags.stage = 'pipeline'")
    assert parent.info.status == "RUNNING" and parent.data.metrics == {}
    [run] = client.search_runs([experiment], filter_string="tags.stage = 'evaluate'")
    assert run.info.status == "FINISHED" and run.data.tags["members"] == str(RELEASED_ENSEMBLE)
    assert run.data.metrics[f"eval/{MEMBERS_ENSEMBLE}/mAP"] == pytest.approx(doc[MEMBERS_ENSEMBLE]["mAP"])
    assert client.search_registered_models() == []


def test_fine_tuning_starts_from_an_imported_model(released):
    state = load_checkpoint(released["imported"])["model"]
    cfg = Model(**{**PAPER_MODEL, "pretrained": str(released["imported"])})
    same = create_model(cfg, CLASSES).state_dict()
    assert all(torch.equal(same[k], v) for k, v in state.items())
    other = create_model(cfg, 5)  # another class list: the backbone, a fresh attention pooling
    assert all(torch.equal(v, state[f"backbone.{k}"]) for k, v in other.backbone.state_dict().items())
    assert torch.equal(other.attention.head_weight.detach(), torch.full((4,), 0.25))


def test_cli_writes_a_checkpoint_with_the_presets_features(released, tmp_path, capsys):
    preset = write_params(
        tmp_path / "fsd50k.yaml",
        {"features": {**PAPER_FEATURES, "target_length": 3000}, "model": PAPER_MODEL},
    )
    out = tmp_path / "fsd" / "fsd_mdl_wa.pt"
    proc = run_module(
        "pipeline.stages.import_psla",
        "--checkpoint",
        str(released["file"]),
        "--classes",
        str(released["classes_csv"]),
        "--out",
        str(out),
        "--params",
        str(preset),
        cwd=tmp_path,
    )
    assert f"3 classes, 3000-frame input -> {out}" in proc.stdout
    payload = load_checkpoint(out)
    assert payload["target_length"] == 3000
    assert all(torch.equal(v, load_checkpoint(released["imported"])["model"][k]) for k, v in payload["model"].items())
    from pipeline.stages.import_psla import main

    missing = tmp_path / "missing.pth"
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", str(missing), "--classes", str(released["classes_csv"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "missing.pth: no such file" in err


def _bad_file(kind: str, path, good):
    if kind == "b0":
        torch.manual_seed(0)
        torch.save(released_state(OfficialEffNetAttention(CLASSES, b=0)), path)
    elif kind == "two_heads":
        torch.manual_seed(0)
        torch.save(released_state(OfficialEffNetAttention(CLASSES, heads=2)), path)
    elif kind == "classes":
        torch.manual_seed(0)
        torch.save(released_state(OfficialEffNetAttention(5)), path)
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_a_state_dict":
        torch.save({"epoch": 3, "mAP": 0.44}, path)
    elif kind == "our_checkpoint":  # a checkpoint of the train stage is no released model
        torch.save(load_checkpoint(good.with_suffix(".pt")), path)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("b0", "its EfficientNet has 16 blocks, the model's (tf_efficientnet_b2) has 23"),
        ("two_heads", "has 2 attention heads, model.heads is 4"),
        ("classes", "scores 5 classes, the class list has 3"),
        ("truncated", "not a readable PyTorch state dict"),
        ("not_a_state_dict", "holds no state dict"),
        ("our_checkpoint", "already a checkpoint of this pipeline"),
    ],
)
def test_files_that_are_not_a_released_model_are_one_line_errors(released, tmp_path, kind, message):
    path = tmp_path / "bad.pth"
    _bad_file(kind, path, released["file"])
    with pytest.raises(PipelineError) as err:
        import_released(path, released["classes"])
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_params_that_do_not_describe_the_released_models_are_one_line_errors(released):
    demo = Params()  # 64 bins, 20 ms, computed normalisation, dynamic padding
    with pytest.raises(PipelineError, match=r"features.num_mel_bins is 64; the released models take 128"):
        import_released(released["file"], released["classes"], demo)
    paper_features = Params(features=Features(**PAPER_FEATURES))
    with pytest.raises(PipelineError, match="model.padding: static"):
        import_released(released["file"], released["classes"], paper_features)


def test_without_params_the_cli_takes_the_papers_audioset_under_set_overrides(tmp_path):
    from pipeline.training.import_psla import paper_audioset_params

    params = paper_audioset_params(["features.target_length=3000"])
    assert params.features.target_length == 3000 and params.model.padding == "static"
    proc = run_module(
        "pipeline.stages.import_psla",
        *("--checkpoint", "m.pth", "--classes", "k.csv", "--out", "o.pt", "--set", "model.heads=-1"),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and not (tmp_path / "o.pt").exists()
    assert proc.stderr.strip() == (
        "error: the paper's AudioSet params (with --set model.heads=-1): model.heads: "
        "Input should be greater than or equal to 0 (got -1)"
    )

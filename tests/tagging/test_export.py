"""`psla export`: the ONNX file scores as the torch model does, the model folder round-trips, and every damaged
or foreign file is a one-line error. One tiny model (EfficientNet-Lite0, 4 heads, 5 classes, the demo's 64 mel
bins) and one ONNX export (the slow part, ~10-30 s) per module."""

import argparse
import json
import shutil
from dataclasses import astuple

import numpy as np
import onnx
import pytest
import torch
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.io import file_sha256
from pipeline.core.params import Features, Model
from pipeline.data.classes import ClassList
from pipeline.features.features import fbank_options
from pipeline.tagging.command import main
from pipeline.tagging.export import add_export, model_card, prepare
from pipeline.tagging.onnx_model import METADATA_KEY, ONNX_FORMAT, OnnxNetwork
from pipeline.training.augment import prepare_eval_batch
from pipeline.training.checkpoint import CHECKPOINT_FORMAT, checkpoint_record, model_from_checkpoint, save_checkpoint
from pipeline.training.loader import Normaliser
from pipeline.training.model import create_model
from pipeline.training.model_folder import read_model_folder

CLASSES = ClassList(tuple(f"/m/{i:02d}" for i in range(5)), ("Speech", "Music", "Dog", "Car", "Rain"))
FEATURES = Features()  # the demo's: 64 mel bins, 150 frames
NORM = Normaliser(-4.2, 3.9)
MODEL = Model(name="tf_efficientnet_lite0", pretrained="none", heads=4)
THRESHOLDS = [0.31, 0.42, 0.5, 0.17, 0.66]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread (and so one onnxruntime thread), as tests/tagging/test_tag.py: two workers share two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A working directory as the DVC pipeline leaves it: models/wa/seed-1.pt, metrics/thresholds.json
    (with that checkpoint's thresholds) and metrics/eval.json."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = create_model(MODEL, len(CLASSES))
    with torch.no_grad():  # trained-looking: BatchNorm statistics and head weights that matter
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        model.attention.head_weight.copy_(torch.tensor([0.4, -0.1, 0.3, 0.5]))
    record = checkpoint_record(MODEL, CLASSES, FEATURES, NORM, model)
    path = root / "models" / "wa" / "seed-1.pt"
    path.parent.mkdir(parents=True)
    payload = {"format": CHECKPOINT_FORMAT, **record, "model": model.state_dict(), "fingerprint": "f00d", "seed": 1}
    save_checkpoint(path, {**payload, "averaged_epochs": [9, 10, 11, 12]})
    (root / "metrics").mkdir()
    document = {
        "format": "psla-thresholds/1",
        "split": "val",
        "val_is_eval": False,
        "rule": "f1",
        "rules": {"f1": "the threshold of best F1 on val"},
        "class_ids": list(CLASSES.mids),
        "class_names": list(CLASSES.names),
        "models": {
            "seed-1/wa": {
                "checkpoints": ["models/wa/seed-1.pt"],
                "checkpoint_sha256": [file_sha256(path)],
                "thresholds": {"f1": THRESHOLDS},
                "f1": [0.5] * 5,
                "fallback": [4],
            },
            "seed-ensemble": {"checkpoints": ["a", "b"], "checkpoint_sha256": ["x", "y"], "thresholds": {"f1": []}},
        },
    }
    (root / "metrics" / "thresholds.json").write_text(json.dumps(document))
    (root / "metrics" / "eval.json").write_text(json.dumps({"seed-1/wa": {"mAP": 0.4321}, "val": {}}))
    (root / "params.yaml").write_text("data:\n  dataset: demo\n  root: data\n")  # its classes are the model's
    (root / "data").mkdir()
    (root / "data" / "classes.csv").write_text(
        "index,mid,display_name\n" + "".join(f"{i},{m},{n}\n" for i, (m, n) in enumerate(zip(*astuple(CLASSES))))
    )
    return root


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


def psla_export(argv: list[str]) -> None:
    """`psla export ARGV`, as the command runs it."""
    main(["export", *argv])


def psla_export_error(argv: list[str], capsys) -> str:
    """The one-line error of a `psla export` that fails (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        psla_export(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_the_handler_registers_on_any_subparsers(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    parser = argparse.ArgumentParser(prog="psla")
    add_export(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", "--model", "models/wa/seed-1.pt", "--format", "folder", "--out", str(tmp_path)])
    args.handler(args)
    assert read_model_folder(tmp_path)["thresholds"]["values"] == pytest.approx(THRESHOLDS)


@pytest.fixture(scope="module")
def torch_model(project):
    payload = torch.load(project / "models/wa/seed-1.pt", weights_only=True)
    return model_from_checkpoint(payload).eval()


@pytest.fixture(scope="module")
def onnx_file(project):
    """The one ONNX export of the module, through the command with --thresholds."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        out = project / "exports" / "model.onnx"
        psla_export(
            ["--model", "models/wa/seed-1.pt", "--format", "onnx", "--out", str(out)]
            + ["--thresholds", "metrics/thresholds.json"]
        )
    return out


@pytest.fixture(scope="module")
def network(onnx_file):
    return OnnxNetwork(onnx_file)


@pytest.fixture(scope="module")
def folder(project):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        out = project / "exports" / "folder"
        psla_export(["--model", "models/wa/seed-1.pt", "--format", "folder", "--out", str(out)])
    return out


def reference(model, fbank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        clip, frames = model.clip_and_frames(prepare_eval_batch(torch.from_numpy(fbank), NORM.mean, NORM.std))
    return clip.numpy(), frames.numpy()


def fbanks(batch: int, length: int, dtype=np.float16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(NORM.mean, NORM.std, (batch, length, FEATURES.num_mel_bins))).astype(dtype)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", [FEATURES.target_length, 77, 257, 31])
def test_onnx_scores_equal_torch_at_any_length_and_batch(network, torch_model, batch, length):
    """Lengths: the training clips', odd shorter, odd longer, and one under the backbone stride (one frame)."""
    x = fbanks(batch, length, seed=length)
    clip, frames = network.run(x)
    want_clip, want_frames = reference(torch_model, x)
    assert clip.dtype == frames.dtype == np.float32
    assert frames.shape == want_frames.shape == (batch, -(-length // 32), len(CLASSES))
    assert np.abs(clip - want_clip).max() < 1e-4
    assert np.abs(frames - want_frames).max() < 1e-4
    assert np.array_equal(network.run(x.astype(np.float32))[0], clip)  # float16 in is float32 in


def test_onnx_graph_names_and_metadata(network, onnx_file, project):
    session = network.session
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("fbank", ["batch", "time", 64])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("clip", ["batch", 5]),
        ("frames", ["batch", "frames", 5]),
    ]
    meta = network.metadata
    assert meta["format"] == ONNX_FORMAT and meta["export"]["opset"] >= 18
    assert set(network.payload) == {
        "class_ids",
        "class_names",
        "fbank_options",
        "target_length",
        "norm",
        "thresholds",
        "provenance",
    }
    assert network.class_ids == CLASSES.mids and network.class_names == CLASSES.names
    assert network.payload["fbank_options"] == fbank_options(FEATURES)
    assert network.payload["target_length"] == FEATURES.target_length
    assert network.payload["norm"] == {"mean": NORM.mean, "std": NORM.std}
    thresholds = network.payload["thresholds"]  # from metrics/thresholds.json of the working directory
    assert thresholds["values"] == pytest.approx(THRESHOLDS) and thresholds["rule"] == "f1"
    assert (thresholds["split"], thresholds["val_is_eval"], thresholds["model"]) == ("val", False, "seed-1/wa")
    assert thresholds["source"] == "metrics/thresholds.json" and thresholds["fallback"] == [4]
    provenance = network.payload["provenance"]
    assert provenance["source_sha256"] == file_sha256(project / "models/wa/seed-1.pt")
    assert provenance["fingerprint"] == "f00d" and provenance["averaged_epochs"] == [9, 10, 11, 12]
    assert provenance["eval"]["mAP"] == 0.4321 and provenance["eval"]["matched_by"] == "thresholds sha256"
    assert provenance["coverage"] is None and provenance["dataset"] == "demo"
    commit = provenance["git_commit"]
    assert commit is None or len(commit) == 40
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx"]  # nothing beside it


def test_folder_round_trips_to_identical_scores(folder, torch_model, network):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    payload = read_model_folder(folder)
    x = fbanks(2, 101)
    got = reference(model_from_checkpoint(payload).eval(), x)
    want = reference(torch_model, x)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    config = json.loads((folder / "config.json").read_text())
    assert config["model_sha256"] == file_sha256(folder / "model.safetensors")
    assert config["thresholds"] == network.payload["thresholds"]
    assert config["class_names"] == list(CLASSES.names) and config["num_classes"] == 5
    assert payload["thresholds"]["values"] == pytest.approx(THRESHOLDS)


def test_the_card_is_a_hub_model_card(folder):
    text = (folder / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["pipeline_tag"] == "audio-classification" and front["license"] == "apache-2.0"
    assert {"audio-classification", "audio-tagging", "psla"} <= set(front["tags"]) and front["library_name"]
    assert "Trained on the `demo` dataset" in text and "mAP 0.4321 on the `eval` split" in text
    assert "psla tag FILE --model folder" in text and "hf upload <user>/<repo> folder" in text


def test_pretrained_dir_loads_the_weights(folder, torch_model):
    same = create_model(MODEL.model_copy(update={"pretrained": str(folder)}), len(CLASSES))
    want = torch_model.state_dict()
    assert all(torch.equal(tensor, want[name]) for name, tensor in same.state_dict().items())
    other = create_model(MODEL.model_copy(update={"pretrained": str(folder)}), 3)  # other classes: fresh pooling
    assert all(torch.equal(t, want[f"backbone.{k}"]) for k, t in other.backbone.state_dict().items())


@pytest.fixture
def damaged(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def test_changed_weights_are_a_one_line_error(damaged):
    weights = damaged / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(PipelineError) as err:
        read_model_folder(damaged)
    assert "model.safetensors" in one_line(err) and "model_sha256" in str(err.value)


def test_truncated_weights_are_a_one_line_error(damaged):
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(PipelineError) as err:
        read_model_folder(damaged)
    assert "model.safetensors" in one_line(err) and "truncated" in str(err.value)
    with pytest.raises(PipelineError) as err:  # model.pretrained: DIR says so too
        create_model(MODEL.model_copy(update={"pretrained": str(damaged)}), len(CLASSES))
    assert one_line(err).startswith("model.pretrained: ")


@pytest.mark.parametrize(
    "edit, expected",
    [
        ("missing config", "config.json: missing"),
        ("missing weights", "model.safetensors: missing"),
        ("not json", "not valid JSON"),
        ("wrong format", "expected 'psla-folder/1'"),
        ("class count", "config.json lists 4"),
    ],
)
def test_a_damaged_config_is_a_one_line_error(damaged, edit, expected):
    config = damaged / "config.json"
    document = json.loads(config.read_text())
    if edit == "missing config":
        config.unlink()
    elif edit == "missing weights":
        (damaged / "model.safetensors").unlink()
    elif edit == "not json":
        config.write_text(config.read_text()[:-20])
    elif edit == "wrong format":
        config.write_text(json.dumps({**document, "format": "hf/transformers"}))
    else:
        config.write_text(json.dumps({**document, "class_ids": document["class_ids"][:4], "class_names": ["a"] * 4}))
    with pytest.raises(PipelineError) as err:
        read_model_folder(damaged)
    assert expected in one_line(err)


def test_onnx_files_that_are_not_ours_are_one_line_errors(onnx_file, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    with pytest.raises(PipelineError) as err:
        OnnxNetwork(truncated)
    assert one_line(err).startswith(f"cannot load {truncated}") and "psla export" in str(err.value)

    proto = onnx.load(str(onnx_file))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(PipelineError) as err:
        OnnxNetwork(foreign)
    assert "not one of psla export" in one_line(err)

    proto = onnx.load(str(onnx_file))
    meta = json.loads(proto.metadata_props[0].value)
    assert proto.metadata_props[0].key == METADATA_KEY
    proto.metadata_props[0].value = json.dumps({**meta, "class_ids": meta["class_ids"][:4], "class_names": ["a"] * 4})
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    with pytest.raises(PipelineError) as err:
        OnnxNetwork(other)
    assert "4 classes but the graph's clip output has 5" in one_line(err)

    with pytest.raises(PipelineError) as err:
        OnnxNetwork(tmp_path / "missing.onnx")
    one_line(err)


def test_without_a_thresholds_entry_it_exports_without_and_says_so(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no metrics/ here
    psla_export(["--model", str(project / "models/wa/seed-1.pt"), "--format", "folder", "--out", "plain"])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no thresholds embedded: metrics/thresholds.json not found")
    payload = read_model_folder(tmp_path / "plain")
    assert payload["thresholds"] is None and payload["provenance"]["eval"] is None
    assert "No evaluation result" in (tmp_path / "plain" / "README.md").read_text()
    # an explicit file without this checkpoint is the command's error
    document = json.loads((project / "metrics/thresholds.json").read_text())
    document["models"]["seed-1/wa"]["checkpoint_sha256"] = ["0" * 64]
    (tmp_path / "t.json").write_text(json.dumps(document))
    with pytest.raises(PipelineError) as err:
        prepare(project / "models/wa/seed-1.pt", str(tmp_path / "t.json"))
    assert "no thresholds for this checkpoint" in one_line(err)


def test_re_export_replaces_a_folder_and_refuses_other_paths(in_project, folder, tmp_path, capsys):
    psla_export(["--model", str(folder), "--format", "folder", "--out", str(folder.parent / "again")])
    again = read_model_folder(in_project / "exports" / "again")
    assert again["thresholds"] == read_model_folder(folder)["thresholds"]  # a folder keeps its own
    assert again["provenance"]["via_folder"] == str(folder)
    psla_export(["--model", "models/wa/seed-1.pt", "--format", "folder", "--out", "exports/again"])  # replaced
    assert sorted(p.name for p in (in_project / "exports").iterdir() if p.name.startswith(".")) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    line = psla_export_error(
        ["--model", "models/wa/seed-1.pt", "--format", "folder", "--out", str(tmp_path / "notes")], capsys
    )
    assert "not a model folder" in line and (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    line = psla_export_error(["--model", "models/wa/seed-1.pt", "--format", "onnx", "--out", str(tmp_path)], capsys)
    assert "is a folder" in line


def test_card_without_provenance_still_reads(folder):
    payload = read_model_folder(folder)
    text = model_card({**payload, "provenance": None, "thresholds": None})
    assert "The dataset is not recorded" in text and "No evaluation result" in text

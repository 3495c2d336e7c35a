"""`psla export`: a trained model as a file or folder that leaves Python and this repository.

    psla export --model CKPT_OR_DIR --format onnx|folder --out PATH [--thresholds metrics/thresholds.json]

- `--format onnx` (`export_onnx`): one ONNX file (`pipeline/tagging/onnx_model.py` documents the graph:
  input `fbank` [batch, time, mel], not normalised, outputs `clip` [batch, classes] and `frames`
  [batch, frames, classes]); everything a reader needs (classes, fbank options, normalisation, thresholds,
  provenance) is in its metadata, so nothing is written beside it. Exported with
  `torch.onnx.export(dynamo=True)` at the exporter's default opset, batch and time dynamic, then checked
  against the torch model on onnxruntime at two input lengths (one odd) before it is written.
- `--format folder` (`export_folder`): a Hugging Face Hub style folder (`pipeline/training/model_folder.py`:
  model.safetensors, config.json, README.md, the model card), which `psla tag FILE --model DIR` and
  `model.pretrained: DIR` read and `hf upload <user>/<repo> DIR` publishes.

`--model` is a checkpoint of the train or average stage, or a model folder. Thresholds: `--thresholds FILE`
embeds the model's per-class thresholds from a thresholds file of the evaluate stage (found by the
checkpoint's SHA-256); without it `metrics/thresholds.json` of the working directory is used when it has
this checkpoint, otherwise the model is exported without thresholds (one line on stderr says so).
Provenance, recorded best effort: the source's SHA-256, the run fingerprint, epochs, the git commit of the
working directory, the eval mAP from `metrics/eval.json`, the dataset when the working directory's params
and class list match the checkpoint's classes. Eval coverage (which eval clips the number was measured on)
is not recorded by the evaluate stage yet: `coverage` is null.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path, file_sha256
from pipeline.core.thresholds import read_thresholds, select_thresholds
from pipeline.data.classes import read_classes
from pipeline.data.params import load_params
from pipeline.tagging.onnx_model import INPUT_NAME, METADATA_KEY, ONNX_FORMAT, OUTPUT_NAMES, session_options
from pipeline.training.augment import prepare_eval_batch
from pipeline.training.checkpoint import check_checkpoint, load_checkpoint, model_from_checkpoint
from pipeline.training.model import PSLAModel, count_parameters, summary_line
from pipeline.training.model_folder import FOLDER_FORMAT, read_model_folder, write_model_folder

EXPORTER = "torch.onnx.export(dynamo=True)"
VERIFY_TOLERANCE = 1e-4  # max |ONNX - torch| of a probability before an export is refused
THRESHOLDS_FILE = Path("metrics") / "thresholds.json"
EVAL_FILE = Path("metrics") / "eval.json"
LICENSE = "apache-2.0"  # the project's (pyproject.toml); the card says what the weights were trained on

EXPORT_HELP = """Export a trained model (a checkpoint of the train or average stage, e.g. models/wa/seed-1.pt,
or a model folder) as one ONNX file (--format onnx: run it with onnxruntime from any language; classes,
fbank options, normalisation, thresholds and provenance are in its metadata) or as a Hugging Face Hub style
folder (--format folder: model.safetensors, config.json, README.md; `psla tag FILE --model DIR` reads it,
`hf upload <user>/<repo> DIR` publishes it). Thresholds come from --thresholds, or from
metrics/thresholds.json when it has this checkpoint."""


# ----------------------------------------------------------------------------------------------
# the graph


class SamePadConv2d(nn.Conv2d):
    """timm's Conv2dSame (TF "same" padding for the actual input size) with the padding written so the
    exporter's symbolic sizes stay small: pad (out - 1) * stride + extent - size with out = ceil(size / stride)
    as a floor division. The pads equal timm's (`max(..., 0)` is never needed when the kernel's extent is at
    least the stride), so the outputs are the same numbers; the output size is exactly `ceil(size / stride)`,
    where timm's `max` and `ceil` made every layer's size a nested expression of all the layers before
    (torch.export took minutes on EfficientNet-Lite0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for axis in (-1, -2):  # F.pad's order: width, then height
            size, stride = x.shape[axis], self.stride[axis]
            extent = (self.kernel_size[axis] - 1) * self.dilation[axis] + 1
            total = ((size + stride - 1) // stride - 1) * stride + extent - size
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _swap_same_convs(module: nn.Module) -> None:
    from timm.layers import Conv2dSame  # here: importing timm costs `psla tag` of an ONNX file a second or two

    for name, child in module.named_children():
        extents = (
            [(k - 1) * d + 1 >= s for k, s, d in zip(child.kernel_size, child.stride, child.dilation)]
            if isinstance(child, Conv2dSame)
            else []
        )
        if extents and all(extents):
            conv = SamePadConv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                0,
                child.dilation,
                child.groups,
                child.bias is not None,
            )
            conv.weight, conv.bias = child.weight, child.bias
            setattr(module, name, conv)
        else:
            _swap_same_convs(child)


class OnnxGraph(nn.Module):
    """What the ONNX file computes: `model.clip_and_frames(prepare_eval_batch(fbank, mean, std))`, the
    normalisation inside the graph, on an export-ready copy of the model."""

    def __init__(self, model: PSLAModel, mean: float, std: float):
        super().__init__()
        self.model = export_ready(model)
        self.mean, self.std = float(mean), float(std)

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.clip_and_frames((fbank - self.mean) / self.std)


def export_ready(model: PSLAModel) -> PSLAModel:
    """A float32, eval-mode, channels-first copy of `model` with the exporter-friendly modules above."""
    ready = copy.deepcopy(model).float().eval()
    ready.channels_last = False
    _swap_same_convs(ready.backbone)
    return ready


def _quietly():
    """The exporter's progress prints and deprecation warnings, out of the command's output."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def onnx_metadata(payload: Mapping, opset: int) -> dict:
    return {
        "format": ONNX_FORMAT,
        "class_ids": [str(c) for c in payload["class_ids"]],
        "class_names": [str(c) for c in payload["class_names"]],
        "fbank_options": dict(payload["fbank_options"]),
        "target_length": int(payload["target_length"]),
        "norm": {"mean": float(payload["norm"]["mean"]), "std": float(payload["norm"]["std"])},
        "thresholds": payload.get("thresholds"),
        "provenance": payload.get("provenance"),
        "model_config": dict(payload["model_config"]),
        "export": {
            "exporter": EXPORTER,
            "opset": opset,
            "torch": torch.__version__,
            "input": f"{INPUT_NAME} float32 [batch, time, mel], not normalised",
            "outputs": f"{OUTPUT_NAMES[0]} [batch, classes], {OUTPUT_NAMES[1]} [batch, frames, classes]",
        },
    }


def _verify_lengths(target_length: int) -> list[int]:
    shorter = max(33, target_length // 2) | 1  # odd
    return [target_length, shorter]


def verify_onnx(model: PSLAModel, proto_bytes: bytes, norm: Mapping, mel_bins: int, lengths: list[int]) -> dict:
    """Max |ONNX - torch| of clip and frames per input length on fbank-like noise (batch 2)."""
    import onnxruntime as ort  # here: importing onnx and onnxruntime costs `psla tag` start-up seconds

    session = ort.InferenceSession(proto_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"])
    mean, std = float(norm["mean"]), float(norm["std"])
    generator = torch.Generator().manual_seed(0)
    diffs = {}
    for length in lengths:
        fbank = torch.randn(2, length, mel_bins, generator=generator) * std + mean
        with torch.inference_mode():
            clip, frames = model.clip_and_frames(prepare_eval_batch(fbank, mean, std))
        got_clip, got_frames = session.run(list(OUTPUT_NAMES), {INPUT_NAME: fbank.numpy()})
        if got_frames.shape != tuple(frames.shape):
            raise PipelineError(
                f"the ONNX export gives frames of shape {list(got_frames.shape)} at length {length}, torch "
                f"{list(frames.shape)}; please report it"
            )
        diffs[length] = float(max(np.abs(got_clip - clip.numpy()).max(), np.abs(got_frames - frames.numpy()).max()))
    return diffs


def export_onnx(payload: Mapping, out_path: str | Path, *, verify: bool = True) -> dict:
    """Write `payload`'s model as one ONNX file at `out_path` (atomic). Returns what was done: opset,
    seconds, and with `verify` (default) the max |ONNX - torch| per checked input length; a difference
    above VERIFY_TOLERANCE is a PipelineError and nothing is written."""
    out = Path(out_path)
    if out.is_dir():
        raise PipelineError(f"{out}: is a folder; --format onnx writes one file (e.g. --out model.onnx)")
    started = time.perf_counter()
    model = model_from_checkpoint(dict(payload)).float().eval()
    mel_bins = int(payload["fbank_options"]["num_mel_bins"])
    length = int(payload["target_length"])
    graph = OnnxGraph(model, payload["norm"]["mean"], payload["norm"]["std"]).eval()
    example = torch.zeros(2, length, mel_bins)  # batch 2: a batch of 1 would be specialised to 1
    with _quietly():
        try:
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"fbank": {0: "batch", 1: "time"}},
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        except Exception as err:
            text = " ".join(str(err).split())[:200]
            raise PipelineError(
                f"the ONNX exporter failed on {model_summary(payload)} ({type(err).__name__}: {text})"
            ) from None
    frames_dim = program.model.graph.outputs[1].shape[1]
    program.rename_axes({frames_dim: "frames"})
    proto = program.model_proto
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(onnx_metadata(payload, opset), ensure_ascii=False)
    proto.doc_string = f"PSLA audio tagger exported by psla export: {model_summary(payload)}"
    import onnx  # here: see verify_onnx

    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    info = {"opset": opset, "exporter": EXPORTER, "bytes": len(data)}
    if verify:
        diffs = verify_onnx(model, data, payload["norm"], mel_bins, _verify_lengths(length))
        info["max_abs_diff"] = diffs
        worst = max(diffs, key=diffs.get)
        if diffs[worst] > VERIFY_TOLERANCE:
            raise PipelineError(
                f"the ONNX export differs from the torch model by {diffs[worst]:.2e} at {worst} frames "
                f"(tolerance {VERIFY_TOLERANCE:g}); nothing written: please report it"
            )
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    info["seconds"] = time.perf_counter() - started
    return info


# ----------------------------------------------------------------------------------------------
# the folder and its card


def model_summary(payload: Mapping) -> str:
    config = payload["model_config"]
    return f"{config.get('name')}, {config.get('heads')} heads, {len(payload['class_ids'])} classes"


def _params_count(payload: Mapping) -> int:
    described = (payload.get("describe") or {}).get("params")
    if described:
        return int(described)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(t.numel() for name, t in payload["model"].items() if not name.endswith(buffers))


def model_card(payload: Mapping, folder_name: str = "DIR") -> str:
    """README.md of a model folder: YAML front matter for the Hugging Face Hub, then what the model is,
    what it was trained on, its numbers, how to tag with it and how to publish it."""
    config, provenance = payload["model_config"], payload.get("provenance") or {}
    classes, names = len(payload["class_ids"]), list(payload["class_names"])
    options, norm = payload["fbank_options"], payload["norm"]
    seconds = int(payload["target_length"]) * float(options["frame_shift"]) / 1000
    params = _params_count(payload)
    dataset = provenance.get("dataset")
    tags = ["audio-classification", "audio-tagging", "psla"]
    lines = [
        "---",
        "library_name: psla-pipeline",
        f"license: {LICENSE}",
        "tags:",
        *(f"- {tag}" for tag in tags),
        "pipeline_tag: audio-classification",
        "---",
        "",
        f"# PSLA audio tagger: {summary_line(config.get('name'), int(config.get('heads', 0)), classes, params)}",
        "",
        "A PSLA model (Gong, Chung & Glass 2021, *PSLA: Improving Audio Tagging with Pretraining, Sampling, "
        "Labeling, and Aggregation*): a timm CNN on one-channel log-mel fbanks, features averaged over frequency, "
        "attention pooling over time. It gives every class a probability per clip, and per backbone time step "
        f"(frames). Exported by `psla export` from `{provenance.get('source', 'a checkpoint')}`.",
        "",
        "## Training data",
        "",
    ]
    shown = ", ".join(names[:10]) + (f", ... ({classes - 10} more)" if classes > 10 else "")
    if dataset:
        lines.append(f"Trained on the `{dataset}` dataset of the pipeline, {classes} classes: {shown}.")
    elif provenance.get("imported_from"):
        lines.append(
            f"Imported from the released PSLA model `{provenance['imported_from']}`; {classes} classes: {shown}."
        )
    else:
        lines.append(f"The dataset is not recorded with the checkpoint; {classes} classes: {shown}.")
    if provenance.get("averaged_epochs"):
        epochs = provenance["averaged_epochs"]
        lines.append(f"The weights average epochs {epochs[0]}-{epochs[-1]} of one run (weight averaging).")
    lines += ["", "## Results", ""]
    evaluation = provenance.get("eval")
    if evaluation:
        lines.append(
            f"mAP {evaluation['mAP']:.4f} on the `{evaluation['split']}` split "
            f"(`{evaluation['source']}`, entry `{evaluation['model']}`)."
        )
        if provenance.get("coverage") is None:
            lines.append(
                "Which of the split's clips it was measured on is not recorded (clips that could not be "
                "downloaded are missing from it)."
            )
    else:
        lines.append("No evaluation result was found for this checkpoint when it was exported.")
    thresholds = payload.get("thresholds")
    if thresholds:
        caveat = " (that split lists the eval clips: an eval score at these thresholds is not clean)"
        lines.append(
            f"Per-class decision thresholds (rule `{thresholds['rule']}`, chosen on the `{thresholds['split']}` "
            f"split{caveat if thresholds.get('val_is_eval') else ''}) are in config.json: a class is present "
            "when its score is at or above its threshold."
        )
    lines += [
        "",
        "## Input",
        "",
        f"Mono audio at {int(options['sample_frequency'])} Hz, Kaldi fbank (torchaudio.compliance.kaldi.fbank, "
        f"options in config.json: {options['num_mel_bins']} mel bins, {options['frame_length']:g} ms frames every "
        f"{options['frame_shift']:g} ms), {payload['target_length']} frames ({seconds:g} s) per window, normalised "
        f"as (x - mean) / std with mean {float(norm['mean']):.4f} and std {float(norm['std']):.4f} (config.json).",
        "",
        "## Use",
        "",
        "With the psla pipeline installed (`pip install -e .` in its repository):",
        "",
        "```sh",
        f"psla tag FILE --model {folder_name}",
        "```",
        "",
        f"or in Python: `model_from_checkpoint(read_model_folder('{folder_name}'))` "
        "(`pipeline.training.checkpoint`, `pipeline.training.model_folder`). Fine-tune from it with "
        f"`model.pretrained: {folder_name}`.",
        "",
        "## Publish",
        "",
        "```sh",
        f"hf upload <user>/<repo> {folder_name}",
        "```",
        "",
        "## Files",
        "",
        "- `model.safetensors`: the weights (state dict of `PSLAModel`);",
        "- `config.json`: model config, classes, fbank options, normalisation, thresholds, provenance, and "
        "`model_sha256`, the SHA-256 of model.safetensors (checked when the folder is read);",
        "- `README.md`: this card.",
        "",
        "## Provenance",
        "",
    ]
    for key, label in (
        ("source_sha256", "source checkpoint SHA-256"),
        ("fingerprint", "training run fingerprint"),
        ("params_hash", "params hash"),
        ("git_commit", "git commit"),
    ):
        if provenance.get(key):
            lines.append(f"- {label}: `{provenance[key]}`")
    return "\n".join(lines) + "\n"


def _version() -> str | None:
    try:
        return metadata.version("psla-pipeline")
    except metadata.PackageNotFoundError:
        return None


def export_folder(payload: Mapping, out_dir: str | Path) -> Path:
    """Write `payload`'s model as a model folder at `out_dir` (atomic), its card from `model_card`."""
    out = Path(out_dir)
    model = model_from_checkpoint(dict(payload))  # the weights fit the architecture before anything is written
    described = {"params": count_parameters(model), **(payload.get("describe") or {})}
    payload = {**payload, "describe": described}
    extra = {"architectures": ["PSLAModel"], "library": {"name": "psla-pipeline", "version": _version()}}
    folder = write_model_folder(out, payload, card=model_card(payload, out.name), extra_config=extra)
    (folder / "model.safetensors").chmod(0o644)  # safetensors writes it private; a folder to publish is not
    return folder


# ----------------------------------------------------------------------------------------------
# sources, thresholds, provenance


def load_source(path: str | Path) -> tuple[dict, dict]:
    """(payload, source facts) of a checkpoint file or a model folder."""
    source = Path(path)
    if source.is_dir():
        payload = read_model_folder(source)
        return payload, {"kind": "folder", "sha256": (payload.get("provenance") or {}).get("source_sha256")}
    if source.suffix == ".onnx":
        raise PipelineError(f"{source}: already an ONNX export; export from its checkpoint or model folder")
    payload = load_checkpoint(source)
    check_checkpoint(source, payload, "export")
    return payload, {"kind": "checkpoint", "sha256": file_sha256(source)}


def _entry_for(document: dict, sha256: str | None) -> str | None:
    models = document.get("models") or {}
    return next((name for name in sorted(models) if models[name].get("checkpoint_sha256") == [sha256]), None)


def thresholds_section(document: dict, source: str, sha256: str, class_ids, rule: str = "f1") -> dict:
    """The model's thresholds as a model embeds them (PipelineError when the file has none for it)."""
    values = select_thresholds(document, source, sha256, list(class_ids), rule)
    name = _entry_for(document, sha256)
    entry = (document.get("models") or {}).get(name) or {}
    return {
        "rule": rule,
        "values": [float(v) for v in values],
        "split": document.get("split"),
        "val_is_eval": bool(document.get("val_is_eval")),
        "source": source,
        "model": name,
        "fallback": list(entry.get("fallback") or []),
        "description": (document.get("rules") or {}).get(rule),
    }


def find_thresholds(explicit: str | None, sha256: str | None, class_ids) -> tuple[dict | None, str | None]:
    """(thresholds, None) from `--thresholds FILE` (its errors are the command's), or from
    metrics/thresholds.json when it has this checkpoint; (None, why not) otherwise."""
    if explicit:
        if not sha256:
            raise PipelineError(f"{explicit}: the model records no source checkpoint SHA-256 to find its thresholds by")
        return thresholds_section(read_thresholds(explicit), explicit, sha256, class_ids), None
    if not THRESHOLDS_FILE.is_file():
        return None, f"{THRESHOLDS_FILE} not found (run the evaluate stage, or pass --thresholds)"
    if not sha256:
        return None, "the model records no source checkpoint SHA-256 to find them by"
    try:
        return thresholds_section(read_thresholds(THRESHOLDS_FILE), str(THRESHOLDS_FILE), sha256, class_ids), None
    except PipelineError as err:
        return None, str(err)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the git repository around `cwd` (the working directory), None outside one or without git."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _entry_by_path(path: Path) -> str | None:
    """The eval.json entry the evaluate stage gives a checkpoint at the DVC stages' paths."""
    if path.parent.name == "wa" and path.stem.startswith("seed-"):
        return f"{path.stem}/wa"  # models/wa/seed-1.pt
    if path.parent.name.startswith("seed-") and path.stem in ("best", "last"):
        return f"{path.parent.name}/{path.stem}"  # models/seed-1/best.pt
    return None


def eval_result(name: str | None, matched_by: str, split: str) -> dict | None:
    """The eval mAP of entry `name` in metrics/eval.json, if it has one (best effort: None otherwise)."""
    if not name or not EVAL_FILE.is_file():
        return None
    try:
        entry = json.loads(EVAL_FILE.read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    value = entry.get("mAP") if isinstance(entry, dict) else None
    if not isinstance(value, (int, float)):
        return None
    return {"mAP": float(value), "split": split, "model": name, "source": str(EVAL_FILE), "matched_by": matched_by}


def _working_params():
    """The working directory's params and class list, if readable (best effort)."""
    try:
        params = load_params("params.yaml")
        classes = read_classes(Path(params.data.root) / "classes.csv")
    except (PipelineError, OSError, ValueError):
        return None, None
    return params, classes


def provenance(source: Path, payload: Mapping, facts: Mapping, thresholds: dict | None) -> dict:
    """Where the exported model comes from (best effort; unknown facts are None)."""
    if facts["kind"] == "folder":  # a folder exported before: its record stands, plus where it was read
        record = dict(payload.get("provenance") or {})
        record["via_folder"] = str(source)
        return record
    params, classes = _working_params()
    same_classes = classes is not None and list(classes.mids) == [str(c) for c in payload["class_ids"]]
    split = params.evaluate.splits[0] if params is not None else "eval"
    by_thresholds = (thresholds or {}).get("model")
    name, matched_by = (by_thresholds, "thresholds sha256") if by_thresholds else (_entry_by_path(source), "path")
    return {
        "source": str(source),
        "source_sha256": facts["sha256"],
        "params_hash": payload.get("params_hash"),  # checkpoint_record does not store one (yet)
        "fingerprint": payload.get("fingerprint"),  # the train stage's run fingerprint (params and data)
        "seed": payload.get("seed"),
        "epoch": payload.get("epoch"),
        "averaged_epochs": payload.get("averaged_epochs"),
        "imported_from": payload.get("imported_from"),
        "dataset": params.data.dataset if same_classes else None,
        "git_commit": git_commit(),
        "eval": eval_result(name, matched_by, split),
        "coverage": None,  # which eval clips the mAP was measured on: the evaluate stage does not record it yet
        "exported_by": {"tool": "psla export", "torch": torch.__version__, "timm": _timm_version()},
    }


def _timm_version() -> str:
    import timm  # here: see _swap_same_convs

    return timm.__version__


def prepare(model: str | Path, thresholds: str | None = None) -> tuple[dict, str | None]:
    """(the payload to export: the source's, with its thresholds and provenance; why it has no thresholds)."""
    source = Path(model)
    payload, facts = load_source(source)
    found, why_not = find_thresholds(thresholds, facts["sha256"], payload["class_ids"])
    if found is None and payload.get("thresholds"):
        found, why_not = payload["thresholds"], None  # a model folder's own, when no file has them
    payload = {**payload, "thresholds": found}
    payload["provenance"] = provenance(source, payload, facts, found)
    return payload, why_not


# ----------------------------------------------------------------------------------------------
# the command


def add_export(commands) -> None:
    """`psla export`, on the `psla` command's subparsers."""
    parser = commands.add_parser(
        "export", help="export a trained model as ONNX or a model folder", description=EXPORT_HELP
    )
    parser.add_argument(
        "--model", required=True, metavar="CKPT_OR_DIR", help="checkpoint (e.g. models/wa/seed-1.pt) or model folder"
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=("onnx", "folder"),
        help="onnx: one .onnx file; folder: model.safetensors, config.json and README.md (Hugging Face Hub layout)",
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="the .onnx file or the folder to write")
    parser.add_argument(
        "--thresholds",
        metavar="FILE",
        help="thresholds file of the evaluate stage to embed the model's thresholds from "
        f"(default: {THRESHOLDS_FILE} when it has this checkpoint)",
    )
    parser.set_defaults(handler=export)


def export(args: argparse.Namespace) -> None:
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise PipelineError(f"--out {args.out}: is the model itself; choose another path")
    payload, why_not = prepare(args.model, args.thresholds)
    if why_not:
        print(f"no thresholds embedded: {' '.join(why_not.split())}", file=sys.stderr)
    summary = model_summary(payload)
    with_thresholds = "with" if payload.get("thresholds") else "without"
    if args.format == "onnx":
        info = export_onnx(payload, args.out)
        size = info["bytes"] / 1e6
        print(
            f"wrote {args.out}: ONNX opset {info['opset']}, {summary}, {with_thresholds} thresholds, "
            f"{size:.1f} MB, in {info['seconds']:.0f} s (metadata '{METADATA_KEY}' inside the file)"
        )
    else:
        export_folder(payload, args.out)
        print(
            f"wrote {args.out}/: {FOLDER_FORMAT} ({summary}, {with_thresholds} thresholds); "
            f"publish it with: hf upload <user>/<repo> {args.out}"
        )

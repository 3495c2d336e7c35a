"""Model folders: a trained model as a folder of plain files, the layout the Hugging Face Hub expects
(`psla export --format folder`; `hf upload <user>/<repo> DIR` publishes one).

    DIR/model.safetensors   the state dict (safetensors: no code runs when it is read), metadata
                            {"format": "psla-folder/1"}
    DIR/config.json         what a reader needs beside the weights: the model config, the class ids and
                            names, the fbank options, target_length, the normalisation, the thresholds and
                            provenance when known, and `model_sha256`, the SHA-256 of model.safetensors
    DIR/README.md           the model card (YAML front matter for the Hub, then text)

`read_model_folder(DIR)` gives the same payload a checkpoint holds (`class_ids`, `class_names`,
`fbank_options`, `target_length`, `norm`, `model_config`, `model`, plus `thresholds` and `provenance`,
None when unknown), so `pipeline.training.checkpoint.model_from_checkpoint` builds the model from it, and
`model.pretrained: DIR` starts a training run from it. A folder is written atomically (into a temporary
folder beside it, then renamed); a damaged or edited one is a one-line `PipelineError` naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipeline.core.errors import PipelineError
from pipeline.core.io import file_sha256
from pipeline.core.params import Model

FOLDER_FORMAT = "psla-folder/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
# what a checkpoint's record holds and tagging needs (pipeline.training.checkpoint.REQUIRED_KEYS, less the weights)
RECORD_KEYS = ("model_config", "class_ids", "class_names", "fbank_options", "target_length", "norm")
OPTIONAL_KEYS = ("thresholds", "provenance")
RESERVED = ("format", "num_classes", "model_sha256", *RECORD_KEYS, *OPTIONAL_KEYS)
REEXPORT = "re-export it with psla export --format folder (or download it again)"


def _state_for_file(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as safetensors stores it: CPU, contiguous, one storage per tensor (shared or
    strided views would be refused)."""
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state.items()}


def folder_config(payload: Mapping, model_sha256: str, extra_config: Mapping | None = None) -> dict:
    """config.json's document for `payload` whose weights file has SHA-256 `model_sha256`."""
    missing = [key for key in ("model", *RECORD_KEYS) if key not in payload]
    if missing:
        raise PipelineError(f"the model lacks {', '.join(missing)}; retrain or re-average it with this pipeline")
    clash = sorted(set(extra_config or {}) & set(RESERVED))
    if clash:
        raise ValueError(f"extra_config may not set {', '.join(clash)}")
    norm = payload["norm"]
    return {
        "format": FOLDER_FORMAT,
        "model_config": dict(payload["model_config"]),
        "num_classes": len(payload["class_ids"]),
        "class_ids": [str(c) for c in payload["class_ids"]],
        "class_names": [str(c) for c in payload["class_names"]],
        "fbank_options": dict(payload["fbank_options"]),
        "target_length": int(payload["target_length"]),
        "norm": {"mean": float(norm["mean"]), "std": float(norm["std"])},
        "thresholds": payload.get("thresholds"),
        "provenance": payload.get("provenance"),
        "model_sha256": model_sha256,
        **dict(extra_config or {}),
    }


def _is_model_folder(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG).read_text()).get("format") == FOLDER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_model_folder(
    out_dir: str | Path, payload: Mapping, *, card: str, extra_config: Mapping | None = None
) -> Path:
    """Write `payload` (a checkpoint's record and `model` state dict, optionally `thresholds` and
    `provenance`) as a model folder at `out_dir`, with `card` as its README.md and `extra_config`'s keys
    added to config.json. Atomic: a reader sees the old folder or the new one. An existing `out_dir` is
    replaced only when it is a model folder or empty; anything else there is a PipelineError."""
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_model_folder(out))):
        raise PipelineError(
            f"{out}: exists and is not a model folder of psla export; remove it or choose another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(_state_for_file(payload["model"]), str(tmp / WEIGHTS), metadata={"format": FOLDER_FORMAT})
        config = folder_config(payload, file_sha256(tmp / WEIGHTS), extra_config)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (tmp / CARD).write_text(card if card.endswith("\n") else card + "\n")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(
            f"{path}: missing, so {path.parent} is not a model folder of psla export (it holds {CONFIG}, "
            f"{WEIGHTS} and {CARD}); {REEXPORT}"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not valid JSON (not UTF-8 text); {REEXPORT}") from None
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); {REEXPORT}") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != FOLDER_FORMAT:
        what = "no format tag" if found is None else f"format {found!r}"
        raise PipelineError(f"{path}: not a psla model folder config ({what}, expected {FOLDER_FORMAT!r}); {REEXPORT}")
    missing = [key for key in (*RECORD_KEYS, "model_sha256") if key not in config]
    if missing:
        raise PipelineError(f"{path}: lacks {', '.join(missing)}; {REEXPORT}")
    if len(config["class_names"]) != len(config["class_ids"]):
        raise PipelineError(
            f"{path}: {len(config['class_names'])} class names for {len(config['class_ids'])} class ids; {REEXPORT}"
        )
    try:
        Model.model_validate({**config["model_config"], "pretrained": "none"})
    except Exception as err:  # pydantic's ValidationError, a model_config that is not a mapping
        raise PipelineError(f"{path}: model_config is not a valid model section ({_one_line(err, 120)})") from None
    return config


def _read_weights(path: Path, want_sha256: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PipelineError(f"{path}: missing (the weights of the model folder); {REEXPORT}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tag = (handle.metadata() or {}).get("format")
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise PipelineError(
            f"{path}: not a complete safetensors file, truncated or damaged ({_one_line(err, 100)}); {REEXPORT}"
        ) from None
    if tag != FOLDER_FORMAT:
        raise PipelineError(
            f"{path}: not the weights of a psla model folder (format {tag!r}, expected {FOLDER_FORMAT!r}); {REEXPORT}"
        )
    have = file_sha256(path)
    if have != want_sha256:
        raise PipelineError(
            f"{path}: its SHA-256 ({have[:12]}...) differs from config.json's model_sha256 "
            f"({str(want_sha256)[:12]}...): the weights were changed or damaged after export; {REEXPORT}"
        )
    return state


def head_classes(state: Mapping[str, torch.Tensor]) -> set[int]:
    """The class counts the attention pooling's 1x1 convs of `state` produce (one count for a sound model)."""
    counts = set()
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[0] == "attention" and parts[1] in ("att", "cla") and parts[-1] == "weight" and tensor.ndim == 4:
            counts.add(int(tensor.shape[0]))
    return counts


def read_model_folder(path: str | Path) -> dict:
    """The payload of a model folder: a checkpoint's record keys, `model` (the state dict), `thresholds`
    and `provenance` (None when the folder has none). One-line PipelineErrors for a missing or invalid
    config.json, missing, truncated or changed weights, and weights of another class count."""
    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no such model folder (export one with psla export --format folder)")
    config = _read_config(folder / CONFIG)
    state = _read_weights(folder / WEIGHTS, config["model_sha256"])
    counts, classes = head_classes(state), len(config["class_ids"])
    if counts != {classes}:
        found = ", ".join(map(str, sorted(counts))) or "no attention pooling"
        raise PipelineError(
            f"{folder / WEIGHTS}: the weights give {found} classes, config.json lists {classes}; "
            f"the folder mixes two models: {REEXPORT}"
        )
    payload = {key: config[key] for key in RECORD_KEYS}
    payload["model"] = state
    for key in OPTIONAL_KEYS:
        payload[key] = config.get(key)
    return payload

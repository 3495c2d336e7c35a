"""The checkpoint contract: what a checkpoint of this pipeline holds, and how every reader loads and checks it.

A checkpoint is a dict saved with `torch.save`, tagged `"format": CHECKPOINT_FORMAT`. It holds the model's
weights (`model`, a state dict) and its record (`checkpoint_record`): the model config, the class ids and
names, the fbank options, the input length and the normalisation stats, everything a reader needs to
rebuild the model and feed it as in training (`REQUIRED_KEYS`). The train stage adds its resume state
(`optimizer`, `scaler`, `sampler`, `epoch`, `step`, `seed`, `history`, `best`, `fingerprint`); the average
stage drops the optimiser, scaler and sampler and adds `averaged_epochs`; an imported released model adds
`imported_from`.

- `save_checkpoint(path, payload)`: atomic (a temporary file, then a rename);
- `load_checkpoint(path)`: `weights_only` (no code runs from the file), one-line errors for a missing,
  damaged or foreign file;
- `load_header(path)`: the checkpoint without its state dicts (model, optimiser), which are memory-mapped
  and never read: what a reader that wants the epoch or the class names loads;
- `model_from_checkpoint(payload)`: the model, with the checkpoint's weights;
- `check_checkpoint(path, payload, purpose, ...)`: the one compatibility check of every reader (tagging,
  evaluation, prediction, weight averaging): the record is complete, and the checkpoint matches what the
  reader will feed it (class list, fbank options) or another checkpoint it is combined with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.core.params import Features, Model
from pipeline.data.classes import ClassList
from pipeline.features.features import fbank_options
from pipeline.training.loader import Normaliser
from pipeline.training.model import create_model, describe

CHECKPOINT_FORMAT = "psla-checkpoint-1"
# What every checkpoint holds, whoever wrote it (train, average, import_psla): the weights and the record.
REQUIRED_KEYS = ("model", "model_config", "class_ids", "class_names", "fbank_options", "target_length", "norm")
STATE_KEYS = ("model", "optimizer", "scaler", "sampler")  # the state dicts: left out of the header


def checkpoint_record(
    model_cfg: Model, classes: ClassList, features: Features, norm: Normaliser, model: torch.nn.Module
) -> dict:
    """What a checkpoint records about its model and data, beside the weights."""
    return {
        "model_config": model_cfg.model_dump(mode="json"),
        "class_ids": list(classes.mids),
        "class_names": list(classes.names),
        "fbank_options": fbank_options(features),
        "target_length": features.target_length,
        "norm": {"mean": norm.mean, "std": norm.std},
        "describe": describe(model_cfg, len(classes), model),
    }


def save_checkpoint(path: str | Path, payload: dict) -> None:
    # to a file object: torch.save names the archive's records after a path it is given, here the
    # temporary's (with the pid), so the same payload would give other bytes, and other DVC hashes, each run
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


def _read(path: str | Path, mmap: bool) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise PipelineError(f"{path}: checkpoint not found") from None
    except Exception as err:  # unpickling errors of a foreign or damaged file
        raise PipelineError(
            f"{path}: not a readable checkpoint ({type(err).__name__}); expected one written "
            "by the train or average stage"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise PipelineError(f"{path}: not a checkpoint of this pipeline (no '{CHECKPOINT_FORMAT}' format tag)")
    return payload


def load_checkpoint(path: str | Path) -> dict:
    """Load one of our checkpoints (weights_only: no code runs from the file)."""
    return _read(path, mmap=False)


def load_header(path: str | Path) -> dict:
    """A checkpoint without its state dicts (`STATE_KEYS`): its record, epoch, history, fingerprint, ...

    The file is memory-mapped, so the tensors of the model and the optimiser are never read from disk."""
    return {k: v for k, v in _read(path, mmap=True).items() if k not in STATE_KEYS}


def model_from_checkpoint(payload: dict) -> torch.nn.Module:
    model = create_model(
        Model.model_validate({**payload["model_config"], "pretrained": "none"}), len(payload["class_ids"])
    )
    model.load_state_dict(payload["model"])
    return model


def check_checkpoint(
    path: str | Path,
    payload: dict,
    purpose: str,
    *,
    class_ids: Sequence[str] | None = None,
    classes_source: str = "the class list",
    features: Mapping[str, dict | None] | None = None,
    like: dict | None = None,
    like_path: str | Path | None = None,
) -> None:
    """The one compatibility check of every checkpoint reader; one-line `PipelineError`s naming `path`.

    `purpose` is what the reader does with it ("tagging", "evaluation", ...), for the messages. Always:
    the record is complete and its class names match its class ids. Then, what the reader passes:
    `class_ids`, the classes it expects (from `classes_source`); `features`, the fbank options of the
    features files it will feed the model, by file (None: unknown, not checked); `like`, another checkpoint
    (at `like_path`) this one is combined with tensor by tensor: same architecture, class ids, tensor
    names, shapes and dtypes, and normalisation.
    """
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise PipelineError(
            f"{path}: the checkpoint lacks {', '.join(missing)}, which {purpose} needs; "
            "retrain or re-average it with this version of the pipeline"
        )
    if len(payload["class_names"]) != len(payload["class_ids"]):
        raise PipelineError(
            f"{path}: {len(payload['class_names'])} class names for "
            f"{len(payload['class_ids'])} class ids; the checkpoint is damaged"
        )
    if class_ids is not None and list(payload["class_ids"]) != list(class_ids):
        raise PipelineError(
            f"{path}: the checkpoint's {len(payload['class_ids'])} classes differ from the "
            f"{len(class_ids)} of {classes_source}; {purpose} needs a model trained on these classes"
        )
    for source, options in (features or {}).items():
        if (
            options is not None
            and payload["fbank_options"] is not None
            and _canonical(options) != _canonical(payload["fbank_options"])
        ):
            raise PipelineError(
                f"{path}: trained on features of other fbank options than {source}; "
                "recompute the features with the run's features params"
            )
    if like is not None:
        _check_alike(path, payload, like_path, like, purpose)


def _canonical(options: dict) -> str:
    return json.dumps(options, sort_keys=True)


def _architecture(payload: dict) -> dict:
    config = payload.get("model_config") or {}
    return {"name": config.get("name"), "heads": config.get("heads"), "classes": len(payload.get("class_ids", []))}


def _arch_text(arch: dict) -> str:
    return f"{arch['name']}, {arch['heads']} heads, {arch['classes']} classes"


def _check_alike(path, payload: dict, like_path, like: dict, purpose: str) -> None:
    """`payload` has the architecture, classes, tensors and normalisation of `like`."""
    a, b = _architecture(payload), _architecture(like)
    if a != b:
        raise PipelineError(
            f"{path}: a different architecture ({_arch_text(a)}) from {like_path} ({_arch_text(b)}); "
            f"{purpose} needs checkpoints of one model"
        )
    if list(payload["class_ids"]) != list(like["class_ids"]):
        raise PipelineError(
            f"{path}: its class ids differ from those of {like_path}; {purpose} needs checkpoints of one class list"
        )
    state, ref = payload["model"], like["model"]
    if state.keys() != ref.keys():
        extra = sorted(set(state) ^ set(ref))[0]
        raise PipelineError(
            f"{path}: a different architecture from {like_path} (tensor '{extra}' is in only one); "
            f"{purpose} needs checkpoints of one model"
        )
    for name, tensor in state.items():
        if tensor.shape != ref[name].shape or tensor.dtype != ref[name].dtype:
            raise PipelineError(
                f"{path}: a different architecture from {like_path} (tensor '{name}' is "
                f"{list(tensor.shape)} {tensor.dtype}, there {list(ref[name].shape)} "
                f"{ref[name].dtype}); {purpose} needs checkpoints of one model"
            )
    if dict(payload.get("norm") or {}) != dict(like.get("norm") or {}):
        raise PipelineError(
            f"{path}: trained with other normalisation stats than {like_path}; {purpose} needs checkpoints of one run"
        )

"""Scoring a features file with a model: what validation, evaluation, the predict stage and the teacher
(scoring the training split for label enhancement) share.

- `predict(model, params, features, norm, device)`: the scores `[N, C]` and labels of a features file, in
  file order, the clips prepared as the evaluation loader prepares them (normalised, not augmented);
- `predict_file(params, checkpoint, features, out)`: a checkpoint's scores of a features file, written as
  a predictions file (`pipeline.core.predictions`).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from pipeline.core.params import Params
from pipeline.core.predictions import write_predictions
from pipeline.training.checkpoint import check_checkpoint, load_checkpoint, model_from_checkpoint
from pipeline.training.device import distributed_from_env, resolve_device
from pipeline.training.loader import FeatureDataset, Normaliser, device_batches, eval_loader


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    params: Params,
    features: Path,
    norm: Normaliser,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N, C] float32 and the labels [N, C] of a features file, in file order."""
    model.eval()
    scores, labels = [], []
    loader = eval_loader(params, FeatureDataset(features), batch_size)
    batches = device_batches(loader, params, norm, device, torch.Generator(), train=False)
    for x, y in tqdm(
        batches,
        total=len(loader),
        desc=f"predict {Path(features).stem}",
        unit="batch",
        disable=not progress,
        mininterval=2.0,
    ):
        scores.append(model(x).float().cpu())
        labels.append(y.cpu())
    return torch.cat(scores).numpy(), torch.cat(labels).numpy()


def _features_header(features: str | Path) -> tuple[list[str], dict | None]:
    """The class ids and fbank options (None when the file does not say) a features file was computed with."""
    with h5py.File(features, "r") as handle:
        options = json.loads(handle.attrs["fbank_options"]) if "fbank_options" in handle.attrs else None
        return json.loads(handle.attrs["class_ids"]), options


def predict_file(
    params: Params, checkpoint: str | Path, features: str | Path, out: str | Path, progress: bool = False
) -> int:
    """Score a features file with a checkpoint and write a predictions file; returns the clip count."""
    payload = load_checkpoint(checkpoint)
    class_ids, options = _features_header(features)
    check_checkpoint(
        checkpoint,
        payload,
        "prediction",
        class_ids=class_ids,
        classes_source=str(features),
        features={str(features): options},
    )
    device = resolve_device(params.train.device, local_rank=distributed_from_env().local_rank)
    model = model_from_checkpoint(payload).to(device)
    scores, _ = predict(model, params, Path(features), Normaliser(**payload["norm"]), device, progress=progress)
    clip_ids = FeatureDataset(features).clip_ids()
    write_predictions(out, scores, clip_ids, payload["class_ids"])
    return len(clip_ids)

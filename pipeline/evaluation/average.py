"""Weight averaging (the paper's "A"): the exact mean of the checkpoints of epochs wa_start..wa_end.

- `select_epochs(run_dir, wa_start, wa_end)`: the run's `epoch_NNN.pt` files of that window.
- `average_checkpoints(paths)`: their mean, tensor by tensor. Floating-point tensors are summed in
  float64 and divided once, then cast back to their own dtype (so the mean of one checkpoint is that
  checkpoint, and the mean of two is `((a + b) / 2)` correctly rounded); integer buffers (BatchNorm's
  `num_batches_tracked`) are taken from the last checkpoint. Each checkpoint counts once; checkpoints
  of another architecture or class list are refused with a one-line error naming the file.
- `reestimate_batchnorm(...)`: optionally, the averaged model's BatchNorm running statistics are
  recomputed from `average.bn_batches` training batches (forward passes in train mode, augmented
  as in training, cumulative average: momentum None). Nothing else changes.

The result is a checkpoint in the train stage's format (so `predict`, `evaluate` and tagging load it
unchanged), without the optimizer state, marked with `averaged_epochs`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.training.checkpoint import CHECKPOINT_FORMAT, check_checkpoint, load_checkpoint, model_from_checkpoint
from pipeline.training.loader import FeatureDataset, Normaliser, aligned_weights, device_batches, train_loader
from pipeline.training.sampler import epoch_seed

EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")
RESUME_ONLY = ("optimizer", "scaler", "sampler")  # training state with no meaning for an average


def epoch_files(run_dir: str | Path) -> dict[int, Path]:
    """The run folder's per-epoch checkpoints, `{epoch: path}` in epoch order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PipelineError(f"{run_dir}: run folder not found (run the train stage first)")
    found = {int(m.group(1)): p for p in run_dir.iterdir() if (m := EPOCH_FILE.match(p.name))}
    return dict(sorted(found.items()))


def _span(epochs: Iterable[int]) -> str:
    epochs = sorted(epochs)
    if not epochs:
        return "none"
    if epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}..{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])
    return ", ".join(map(str, epochs))


def select_epochs(run_dir: str | Path, wa_start: int, wa_end: int) -> list[Path]:
    """`epoch_NNN.pt` of every epoch wa_start..wa_end of a run; a one-line error naming a missing one."""
    if wa_start < 1 or wa_end < wa_start:
        raise PipelineError(f"average.wa_start={wa_start}, average.wa_end={wa_end}: need 1 <= wa_start <= wa_end")
    present = epoch_files(run_dir)
    for epoch in range(wa_start, wa_end + 1):
        if epoch not in present:
            raise PipelineError(
                f"{Path(run_dir) / f'epoch_{epoch:03d}.pt'}: missing (the run has epochs "
                f"{_span(present)}); set average.wa_start/wa_end within the epochs trained "
                f"(train.epochs)"
            )
    return [present[e] for e in range(wa_start, wa_end + 1)]


def average_checkpoints(paths: Sequence[str | Path]) -> dict:
    """The exact mean of the model weights of `paths` (checkpoints of one model), as a checkpoint payload.

    The payload is the last checkpoint's, with the averaged weights and without the optimizer state;
    `averaged_epochs` lists the epochs averaged and `averaged_from` the files' names.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise PipelineError("weight averaging needs at least one checkpoint")
    seen: dict = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise PipelineError(f"{path}: listed twice; each checkpoint counts once in the average")
        seen[key] = path
    sums: dict[str, torch.Tensor] = {}
    first = first_path = payload = None
    identities: dict[tuple, Path] = {}
    epochs = []
    for path in paths:
        payload = load_checkpoint(path)
        if payload.get("averaged_epochs"):
            raise PipelineError(f"{path}: already a weight average; average the epoch checkpoints themselves")
        identity = (payload.get("fingerprint"), payload.get("seed"), payload.get("epoch"))
        if identity[0] is not None and identity in identities:
            raise PipelineError(
                f"{path}: the same epoch {identity[2]} of the same run as {identities[identity]}; "
                "each epoch counts once in the average"
            )
        identities[identity] = path
        epochs.append(payload.get("epoch"))
        check_checkpoint(path, payload, "weight averaging", like=first, like_path=first_path)
        if first is None:
            first, first_path = {k: v for k, v in payload.items() if k not in RESUME_ONLY}, path
            sums = {k: v.to(torch.float64).clone() for k, v in payload["model"].items() if v.is_floating_point()}
        else:
            for name, acc in sums.items():
                acc.add_(payload["model"][name].to(torch.float64))
    n = len(paths)
    reference = first["model"]
    last_state = payload["model"]
    averaged = {}
    for name, tensor in last_state.items():
        if name in sums:
            averaged[name] = (sums[name] / n).to(reference[name].dtype)
        else:  # integer buffers (num_batches_tracked): the last checkpoint's
            averaged[name] = tensor.clone()
    result = {k: v for k, v in payload.items() if k not in RESUME_ONLY}
    result.update(
        {
            "format": CHECKPOINT_FORMAT,
            "model": averaged,
            "averaged_epochs": epochs,
            "averaged_from": [p.name for p in paths],
            "bn_reestimated_batches": 0,
        }
    )
    return result


# ----------------------------------------------------------------------------------------------
# BatchNorm statistics


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable, n_batches: int) -> int:
    """Recompute every BatchNorm layer's running mean and variance from `n_batches` of `batches`
    (`(x, y)` pairs on the model's device): forward passes in train mode, the statistics a cumulative
    average over the batches (momentum None). Weights are untouched; returns the batches used."""
    layers = batchnorm_layers(model)
    if not layers or n_batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    used = 0
    try:
        for x, _ in batches:
            model(x)
            used += 1
            if used >= n_batches:
                break
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise PipelineError("no training batch to re-estimate the BatchNorm statistics from")
    return used


def reestimate_payload_batchnorm(
    payload: dict,
    params,
    train_features: str | Path,
    weights: dict[str, float] | None,
    device: torch.device,
    n_batches: int | None = None,
) -> dict:
    """`payload` with its model's BatchNorm statistics re-estimated on training batches (augmented as in
    training, drawn by the run's sampler from a generator seeded by the run's seed)."""

    n_batches = params.average.bn_batches if n_batches is None else n_batches
    if n_batches <= 0:
        return payload
    dataset = FeatureDataset(train_features)
    if dataset.num_classes != len(payload["class_ids"]):
        raise PipelineError(
            f"{train_features}: {dataset.num_classes} label columns, but the checkpoint has "
            f"{len(payload['class_ids'])} classes; pass the training features the run used"
        )
    if params.sampling.balanced and weights is None:
        raise PipelineError(
            "sampling.balanced is true: pass --weights (the sampling weights the run trained with) "
            "to re-estimate BatchNorm statistics on batches drawn as in training"
        )
    row_weights = aligned_weights(dataset, weights, "weights") if weights is not None else None
    seed = int(payload.get("seed") or 0)
    loader = train_loader(
        params, dataset, row_weights, seed=seed, device=device, num_samples=n_batches * params.train.batch_size
    )
    loader.sampler.set_epoch(0)  # training uses epochs 1.., so these draws are their own
    generator = torch.Generator(device=device).manual_seed(epoch_seed(seed, 0))
    model = model_from_checkpoint(payload).to(device)
    torch.manual_seed(epoch_seed(seed, 0))
    norm = Normaliser(**payload["norm"])
    used = reestimate_batchnorm(model, device_batches(loader, params, norm, device, generator, train=True), n_batches)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {**payload, "model": state, "bn_reestimated_batches": used}


def state_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that differ between two state dicts (for checks and tests)."""
    return [k for k in a if not torch.equal(a[k], b[k])]


def running_statistic_names(model: nn.Module) -> set[str]:
    """State-dict names of the BatchNorm running statistics of `model`."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                names.add(f"{prefix}.{buffer}" if prefix else buffer)
    return names

"""Training one model (a teacher or one seed) with the PSLA recipe, resumable epoch by epoch.

Read top to bottom: setup, resume, the epoch loop (train, validate, checkpoint, log), done.

Recipe (docs/recipe.md, "Loss, optimizer and schedule"): BCE on outputs clamped to [1e-7, 1 - 1e-7]; Adam;
a warm-up over the first `train.warmup_steps` steps (`train.warmup`: linear, or the paper's staircase,
see `learning_rate`); epoch e uses
lr * lr_decay ** (number of milestones lr_decay_start, lr_decay_start + lr_decay_every, ...
that are < e), i.e. the rate drops after epoch lr_decay_start and every lr_decay_every epochs
after it. Batches come from the balanced sampler; mixup, SpecAugment and normalisation run on
the training device.

Resume is exact: every source of randomness is re-seeded from (seed, epoch) at the start of
each epoch, so a run restarted from the checkpoint of epoch k continues exactly as the
uninterrupted run would (on CPU; CUDA kernels may differ in the last bits).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path, atomic_write_text
from pipeline.core.metric_values import summary_notes
from pipeline.core.params import Model, Params
from pipeline.core.perf import tune_host_allocator
from pipeline.core.predictions import write_predictions
from pipeline.data.classes import ClassList
from pipeline.evaluation.score import d_prime, evaluate
from pipeline.features.features import fbank_options
from pipeline.training.loader import (
    FeatureDataset,
    Normaliser,
    aligned_weights,
    device_batches,
    eval_loader,
    train_loader,
)
from pipeline.training.model import count_parameters, create_model, describe

CLAMP = 1e-7
CHECKPOINT_FORMAT = "psla-checkpoint-1"
HISTORY_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "val_loss",
    "val_mAP",
    "val_mAUC",
    "val_d_prime",
    "seconds",
    "clips_per_second",
    "data_wait",
)


@dataclass
class Inputs:
    train_features: Path
    val_features: Path
    weights: dict[str, float] | None  # clip id -> sampling weight (None: uniform)
    norm: Normaliser
    classes: ClassList


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """The process group torchrun describes in the environment (or a single process)."""
    if "RANK" not in os.environ:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(params: Params, dist_info: Distributed) -> torch.device:
    wanted = params.train.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PipelineError(f"train.device={params.train.device}: no CUDA device here; set train.device=cpu")
        return torch.device("cuda", dist_info.local_rank if wanted == "cuda" else int(wanted.split(":")[1]))
    return torch.device(wanted)


PAPER_WARMUP_EVERY = 50  # the official code raises the rate every 50 steps


def _decays_before(cfg, epoch: int) -> int:
    """Milestones lr_decay_start, lr_decay_start + lr_decay_every, ... that are < epoch."""
    return 0 if epoch <= cfg.lr_decay_start else (epoch - cfg.lr_decay_start - 1) // cfg.lr_decay_every + 1


def learning_rate(params: Params, epoch: int, step: int, steps_per_epoch: int | None = None) -> float:
    """The rate of optimizer step `step` (counted from 1) in epoch `epoch` (counted from 1).

    `train.warmup: linear`: lr x min(1, step / warmup_steps) x lr_decay ** (milestones passed).
    `train.warmup: paper`, the official traintest.py: its step counter g starts at 0 (g = step - 1);
    while g <= warmup_steps, every 50th step *sets* the rate to g / warmup_steps x lr, so steps 0-49 run
    at 0 and the rate is lr from g = warmup_steps on. The epoch decay (MultiStepLR, stepped at the end of
    each epoch) multiplies whatever rate is set, so a decay that happens before the last warm-up setting
    is overwritten by it: only milestones from the epoch of that setting on count. `steps_per_epoch`
    places the settings in epochs (needed for paper; without it they are taken to fall in epoch 1).
    """
    cfg = params.train
    if cfg.warmup == "linear" or not cfg.warmup_steps:
        warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return cfg.lr * warm * cfg.lr_decay ** _decays_before(cfg, epoch)
    g = step - 1
    last_set = min(g, cfg.warmup_steps) // PAPER_WARMUP_EVERY * PAPER_WARMUP_EVERY
    set_in_epoch = last_set // steps_per_epoch + 1 if steps_per_epoch else 1
    drops = _decays_before(cfg, epoch) - _decays_before(cfg, set_in_epoch)
    return cfg.lr * last_set / cfg.warmup_steps * cfg.lr_decay**drops


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0])


def bce(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy(probabilities.float().clamp(CLAMP, 1 - CLAMP), targets)


def _features_identity(path: Path, digest, with_labels: bool) -> None:
    with h5py.File(path, "r") as handle:
        digest.update(repr(handle["fbank"].shape).encode())
        digest.update(json.dumps({k: str(v) for k, v in handle.attrs.items()}, sort_keys=True).encode())
        digest.update(b"\0".join(c if isinstance(c, bytes) else c.encode() for c in handle["clip_id"][:]))
        if with_labels:  # enhanced labels change the run even when the clips do not
            labels = handle["labels"]
            for start in range(0, labels.shape[0], 1 << 16):
                digest.update(labels[start : start + (1 << 16)].tobytes())


def run_fingerprint(params: Params, inputs: Inputs, seed: int) -> str:
    """What checkpoints must agree on to be resumed: the params (all but the number of epochs and
    where it runs) and the identity of the data (clips, labels, weights, normalisation)."""
    relevant = {
        k: v for k, v in params.model_dump(mode="json").items() if k in ("features", "sampling", "augment", "model")
    }
    relevant["train"] = {
        k: v
        for k, v in params.train.model_dump(mode="json").items()
        if k not in ("epochs", "num_workers", "device", "devices", "seeds", "log_every")
    }
    relevant["seed"], relevant["classes"] = seed, list(inputs.classes.mids)
    relevant["norm"] = [inputs.norm.mean, inputs.norm.std]
    relevant["weights"] = sorted((inputs.weights or {}).items())
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    _features_identity(inputs.train_features, digest, with_labels=True)
    _features_identity(inputs.val_features, digest, with_labels=True)
    return digest.hexdigest()[:16]


def discard_run(out_dir: Path) -> None:
    for path in [*out_dir.glob("epoch_*.pt"), out_dir / "last.pt", out_dir / "best.pt", out_dir / "history.csv"]:
        path.unlink(missing_ok=True)


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Load one of our checkpoints (weights_only: no code runs from the file)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
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


def model_from_checkpoint(payload: dict) -> torch.nn.Module:
    model = create_model(
        Model.model_validate({**payload["model_config"], "pretrained": "none"}), len(payload["class_ids"])
    )
    model.load_state_dict(payload["model"])
    return model


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


def predict_file(
    params: Params, checkpoint: str | Path, features: str | Path, out: str | Path, progress: bool = False
) -> int:
    """Score a features file with a checkpoint and write a predictions file; returns the clip count."""
    payload = load_checkpoint(checkpoint)
    with h5py.File(features, "r") as handle:
        if json.loads(handle.attrs["class_ids"]) != payload["class_ids"]:
            raise PipelineError(f"{features}: its classes differ from the checkpoint's ({checkpoint})")
    device = resolve_device(params, distributed_from_env())
    model = model_from_checkpoint(payload).to(device)
    scores, _ = predict(model, params, Path(features), Normaliser(**payload["norm"]), device, progress=progress)
    clip_ids = FeatureDataset(features).clip_ids()
    write_predictions(out, scores, clip_ids, payload["class_ids"])
    return len(clip_ids)


def validate(model, params, features, norm, device, class_ids) -> dict:
    scores, labels = predict(model, params, features, norm, device)
    loss = bce(torch.from_numpy(scores), torch.from_numpy(labels)).item()
    metrics = evaluate(labels, scores, list(class_ids))
    # History rows hold floats: NaN where a metric is undefined (no positives), +-inf for the d-prime of
    # mAUC 1 or 0; history.csv writes them as nan / inf (docs/recipe.md, "Metrics"), MLflow tags them.
    m_ap = math.nan if metrics["mAP"] is None else metrics["mAP"]
    m_auc = math.nan if metrics["mAUC"] is None else metrics["mAUC"]
    return {"val_loss": loss, "val_mAP": m_ap, "val_mAUC": m_auc, "val_d_prime": d_prime(m_auc)}


def metric_notes(row: dict) -> dict[str, str]:
    """What each validation value of a history row that is not a finite number means (for MLflow's tags)."""
    notes = summary_notes(row["val_mAP"], row["val_mAUC"])
    return {f"val_{key[: -len('_note')]}": note for key, note in notes.items()} | (
        {"best_val_mAP": notes["mAP_note"]} if "mAP_note" in notes else {}
    )


def improves(value: float, best: float) -> bool:
    """Whether a validation mAP beats the best so far; an undefined one (NaN) never does, and any beats it."""
    return not math.isnan(value) and (math.isnan(best) or value > best)


def write_history(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in HISTORY_COLUMNS} for row in rows)
    atomic_write_text(path, buffer.getvalue())


def plot_history(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    left.plot(epochs, [r["val_loss"] for r in rows], label="val loss")
    left.set_xlabel("epoch"), left.legend(), left.set_title("BCE loss")
    right.plot(epochs, [r["val_mAP"] for r in rows], marker="o", label="val mAP")
    right.set_xlabel("epoch"), right.set_ylim(0, 1), right.legend(), right.set_title("validation mAP")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def train_step(
    model, optimizer, scaler, x: torch.Tensor, y: torch.Tensor, lr: float, amp_dtype: torch.dtype | None = None
) -> float:
    """One optimizer step on an augmented batch; returns the loss (NaN/inf: no update was made).

    With train.channels_last the model itself lays its 4-D input out to match its weights."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = model(x)
    if not torch.isfinite(out).all():  # BCE itself refuses NaN inputs with an unhelpful error
        return float("nan")
    loss = bce(out, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of the parameters (not the BatchNorm running statistics, which DDP keeps per process)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(
    params: Params,
    inputs: Inputs,
    out_dir: str | Path,
    seed: int,
    run=None,
    progress: bool = True,
    dist_info: Distributed | None = None,
    rank_report: Path | None = None,
) -> dict:
    """Train (or resume) one model into `out_dir`; returns the best epoch's validation metrics.

    `rank_report`: a folder where every process writes what it drew and its final weights'
    digest (`rank<R>.json`), so a DDP run can be audited.
    """
    dist_info = dist_info or Distributed()
    out_dir = Path(out_dir)
    device = resolve_device(params, dist_info)
    cfg = params.train
    if device.type == "cpu":
        tune_host_allocator()

    # ---- model, optimizer, data
    torch.manual_seed(seed)
    model = create_model(params.model, len(inputs.classes)).to(device)
    if cfg.channels_last:
        model = model.to_channels_last()
    n_params = count_parameters(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    train_set = FeatureDataset(inputs.train_features)
    if train_set.num_classes != len(inputs.classes):
        raise PipelineError(
            f"{inputs.train_features}: {train_set.num_classes} label columns but the class list has "
            f"{len(inputs.classes)}; recompute the features with this class list"
        )
    weights = aligned_weights(train_set, inputs.weights, "weights") if inputs.weights else None
    loader = train_loader(
        params, train_set, weights, seed=seed, rank=dist_info.rank, world_size=dist_info.world_size, device=device
    )
    use_amp = cfg.amp != "none" and device.type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.amp == "fp16")

    # ---- resume from the last complete epoch
    fingerprint = run_fingerprint(params, inputs, seed)
    history, start_epoch, step, best = [], 1, 0, {"val_mAP": -1.0}
    last = out_dir / "last.pt"
    state = load_checkpoint(last) if last.is_file() else None
    if dist_info.world_size > 1:
        dist.barrier()  # every process has read the checkpoint before rank 0 may discard it
    if state is not None and state["fingerprint"] != fingerprint:
        if dist_info.main:
            print(f"{out_dir}: its checkpoints were trained with other params or data; starting over")
            discard_run(out_dir)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history, step, best = state["history"], state["step"], state["best"]
        start_epoch = state["epoch"] + 1
        if dist_info.main:
            print(f"resuming {out_dir} after epoch {state['epoch']} (step {step})")

    trained = model
    if cfg.compile:
        trained = torch.compile(trained)
    if dist_info.world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )

    config_record = {
        "model_config": params.model.model_dump(mode="json"),
        "class_ids": list(inputs.classes.mids),
        "class_names": list(inputs.classes.names),
        "fbank_options": fbank_options(params.features),
        "target_length": params.features.target_length,
        "norm": {"mean": inputs.norm.mean, "std": inputs.norm.std},
        "describe": describe(params.model, len(inputs.classes)),
    }
    if run is not None and dist_info.main:
        run.log_metrics({"parameters": n_params})

    drawn = []  # clip rows this process drew (for rank_report)
    for epoch in range(start_epoch, cfg.epochs + 1):
        # every random draw of this epoch follows from (seed, epoch): resumed runs repeat it exactly
        torch.manual_seed(epoch_seed(seed, epoch))
        np.random.seed(epoch_seed(seed, epoch) % 2**32)
        loader.sampler.set_epoch(epoch)
        generator = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch))
        trained.train()
        started, waited, seen, loss_sum, batches = time.perf_counter(), 0.0, 0, 0.0, 0
        bar = tqdm(
            total=len(loader.sampler) * dist_info.world_size,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="clip",
            disable=not (progress and dist_info.main),
            mininterval=1.0,
        )
        fetched = time.perf_counter()
        drawn.extend(int(i) for i in (loader.sampler.rows() if hasattr(loader.sampler, "rows") else loader.sampler))
        for x, y in device_batches(loader, params, inputs.norm, device, generator):
            waited += time.perf_counter() - fetched
            step += 1
            lr = learning_rate(params, epoch, step, len(loader))
            loss_value = train_step(trained, optimizer, scaler, x, y, lr, amp_dtype if use_amp else None)
            if not math.isfinite(loss_value):
                raise PipelineError(
                    f"non-finite training loss ({loss_value}) at step {step}, epoch {epoch}: "
                    "lower train.lr or check the features and stats"
                )
            loss_sum, batches, seen = loss_sum + loss_value, batches + 1, seen + len(x) * dist_info.world_size
            bar.update(len(x) * dist_info.world_size)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
            if run is not None and dist_info.main and step % cfg.log_every == 0:
                run.log_metrics({"train_loss_step": loss_value, "lr": lr}, step=step)
            fetched = time.perf_counter()
        bar.close()
        seconds = time.perf_counter() - started

        if dist_info.world_size > 1:
            dist.barrier()
        if dist_info.main:
            row = {
                "epoch": epoch,
                "step": step,
                "lr": lr,
                "train_loss": loss_sum / max(batches, 1),
                "seconds": round(seconds, 3),
                "clips_per_second": seen / seconds if seconds else 0.0,
                "data_wait": waited / seconds if seconds else 0.0,
                **validate(model, params, inputs.val_features, inputs.norm, device, inputs.classes.mids),
            }
            history.append(row)
            improved = "epoch" not in best or improves(row["val_mAP"], best["val_mAP"])
            if improved:
                best = {**row}
            payload = {
                "format": CHECKPOINT_FORMAT,
                **config_record,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "sampler": loader.sampler.state_dict(),
                "epoch": epoch,
                "step": step,
                "seed": seed,
                "history": history,
                "best": best,
                "fingerprint": fingerprint,
            }
            save_checkpoint(out_dir / f"epoch_{epoch:03d}.pt", payload)
            if improved:
                save_checkpoint(out_dir / "best.pt", payload)
            save_checkpoint(last, payload)  # last: the resume point, written after the epoch's own file
            write_history(out_dir / "history.csv", history)
            if run is not None:
                run.log_metrics(
                    {k: v for k, v in row.items() if k not in ("epoch", "step")}, step=epoch, notes=metric_notes(row)
                )
            print(
                f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                f"val mAP {row['val_mAP']:.4f}, {row['clips_per_second']:.0f} clips/s, "
                f"data wait {row['data_wait']:.0%}",
                flush=True,
            )
        if dist_info.world_size > 1:
            dist.barrier()

    if rank_report is not None:
        rank_report.mkdir(parents=True, exist_ok=True)
        (rank_report / f"rank{dist_info.rank}.json").write_text(
            json.dumps(
                {
                    "rank": dist_info.rank,
                    "world_size": dist_info.world_size,
                    "drawn": drawn,
                    "weights": weights_digest(model),
                }
            )
        )
    if dist_info.main:
        if not history:
            raise PipelineError(f"{out_dir}: no epoch trained (train.epochs={cfg.epochs})")
        if not (out_dir / "best.pt").is_file():  # removed by a workflow manager before a resumed run
            save_checkpoint(
                out_dir / "best.pt",
                torch.load(out_dir / f"epoch_{best['epoch']:03d}.pt", map_location="cpu", weights_only=True),
            )
        write_history(out_dir / "history.csv", history)
        plot_history(out_dir / "curves.png", history)
        if run is not None:
            run.log_artifact(out_dir / "history.csv")
            run.log_artifact(out_dir / "curves.png")
            run.log_metrics({"best_epoch": best["epoch"], "best_val_mAP": best["val_mAP"]}, notes=metric_notes(best))
    return best

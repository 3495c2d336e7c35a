"""Training one model (a teacher or one seed) with the PSLA recipe, resumable epoch by epoch.

Read `train` top to bottom: `set_up` (device, model, optimiser, batches), `resume` (from the last
complete epoch), then per epoch `run_epoch` (the optimiser steps) and `end_epoch` (validate, checkpoint,
log), and `finish` (history, curves, best.pt). The checkpoint format is `pipeline.training.checkpoint`'s,
scoring a features file `pipeline.training.predict`'s.

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
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path, atomic_write_text
from pipeline.core.metric_values import summary_notes
from pipeline.core.metrics import d_prime, evaluate
from pipeline.core.params import Params
from pipeline.core.perf import tune_host_allocator
from pipeline.core.report import timing_path
from pipeline.data.classes import ClassList
from pipeline.training.checkpoint import CHECKPOINT_FORMAT, checkpoint_record, load_checkpoint, save_checkpoint
from pipeline.training.device import Distributed, resolve_device
from pipeline.training.loader import FeatureDataset, Normaliser, aligned_weights, device_batches, train_loader
from pipeline.training.model import CLAMP, count_parameters, create_model
from pipeline.training.predict import predict

HISTORY_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "val_loss",
    "val_mAP",
    "val_mAUC",
    "val_d_prime",
)
# Wall clock, per epoch: printed, logged to MLflow and written to history.timing.csv beside history.csv
# (ignored by git and DVC), never to history.csv, its plots copy or a checkpoint, which a rerun must
# write byte for byte again (a clean tree, an unchanged dvc.lock).
TIMING_COLUMNS = ("seconds", "clips_per_second", "data_wait")


@dataclass
class Inputs:
    train_features: Path
    val_features: Path
    weights: dict[str, float] | None  # clip id -> sampling weight (None: uniform)
    norm: Normaliser
    classes: ClassList


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


def untimed(row: dict) -> dict:
    """A history row without its wall-clock columns (`TIMING_COLUMNS`): what checkpoints hold."""
    return {k: v for k, v in row.items() if k not in TIMING_COLUMNS}


def write_history(path: Path, rows: list[dict]) -> None:
    """`HISTORY_COLUMNS` of `rows` to `path` (history.csv), and `epoch` + `TIMING_COLUMNS` to its timing file
    (`timing_path`: history.timing.csv). Rows without timings (epochs resumed from a checkpoint) keep the
    timings the file already holds for their epoch."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in HISTORY_COLUMNS} for row in rows)
    atomic_write_text(path, buffer.getvalue())

    timing = timing_path(path)
    earlier = {}
    if timing.is_file():
        with open(timing, newline="") as handle:
            earlier = {r.get("epoch"): r for r in csv.DictReader(handle)}
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=("epoch", *TIMING_COLUMNS), lineterminator="\n", restval="", extrasaction="ignore"
    )
    writer.writeheader()
    for row in rows:
        if all(k in row for k in TIMING_COLUMNS):
            writer.writerow({k: row[k] for k in ("epoch", *TIMING_COLUMNS)})
        else:
            writer.writerow({**earlier.get(str(row["epoch"]), {}), "epoch": row["epoch"]})
    atomic_write_text(timing, buffer.getvalue())


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


# ----------------------------------------------------------------------------------------------
# the training loop


@dataclass
class Session:
    """What one process holds while it trains a model: built by `set_up`, advanced epoch by epoch."""

    params: Params
    inputs: Inputs
    out_dir: Path
    seed: int
    dist_info: Distributed
    device: torch.device
    model: torch.nn.Module  # the model itself, what checkpoints hold and validation runs
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # None: no mixed precision
    fingerprint: str  # what a checkpoint must match to be resumed (run_fingerprint)
    record: dict  # what every checkpoint of the run records beside the weights (checkpoint_record)
    history: list[dict] = field(default_factory=list)
    step: int = 0
    best: dict = field(default_factory=lambda: {"val_mAP": -1.0})
    start_epoch: int = 1
    drawn: list[int] = field(default_factory=list)  # clip rows this process drew (for the rank report)


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

    `run`: the stage's MLflow run (None: nothing is logged); `rank_report`: a folder where every process
    writes what it drew and its final weights' digest (`rank<R>.json`), so a DDP run can be audited.
    """
    session = set_up(params, inputs, Path(out_dir), seed, dist_info or Distributed())
    resume(session)
    trained = for_training(session)
    if run is not None and session.dist_info.main:
        run.log_metrics({"parameters": count_parameters(session.model)})
    for epoch in range(session.start_epoch, params.train.epochs + 1):
        row = run_epoch(session, trained, epoch, run, progress)
        _barrier(session.dist_info)  # every process has stepped before rank 0 validates and saves
        if session.dist_info.main:
            end_epoch(session, row, run)
        _barrier(session.dist_info)  # and the epoch is saved before any process starts the next
    if rank_report is not None:
        write_rank_report(session, rank_report)
    if session.dist_info.main:
        finish(session, run)
    return session.best


def _barrier(dist_info: Distributed) -> None:
    if dist_info.world_size > 1:
        dist.barrier()


def set_up(params: Params, inputs: Inputs, out_dir: Path, seed: int, dist_info: Distributed) -> Session:
    """The device, the model and its optimiser, the training batches, and what the checkpoints record."""
    cfg = params.train
    device = resolve_device(cfg.device, local_rank=dist_info.local_rank)
    if device.type == "cpu":
        tune_host_allocator()
    torch.manual_seed(seed)  # the initial weights follow from the seed
    model = create_model(params.model, len(inputs.classes)).to(device)
    if cfg.channels_last:
        model = model.to_channels_last()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    use_amp = cfg.amp != "none" and device.type == "cuda"
    return Session(
        params,
        inputs,
        out_dir,
        seed,
        dist_info,
        device,
        model,
        optimizer,
        loader=training_batches(params, inputs, seed, dist_info, device),
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp and cfg.amp == "fp16"),
        amp_dtype=(torch.bfloat16 if cfg.amp == "bf16" else torch.float16) if use_amp else None,
        fingerprint=run_fingerprint(params, inputs, seed),
        record=checkpoint_record(params.model, inputs.classes, params.features, inputs.norm, model),
    )


def training_batches(
    params: Params, inputs: Inputs, seed: int, dist_info: Distributed, device: torch.device
) -> DataLoader:
    """This process's share of the training batches, its labels checked against the class list."""
    train_set = FeatureDataset(inputs.train_features)
    if not len(train_set):  # no batch: no step, no loss and no learning rate for an epoch
        raise PipelineError(
            f"{inputs.train_features}: no clips to train on (the features stage wrote none; see its report)"
        )
    if train_set.num_classes != len(inputs.classes):
        raise PipelineError(
            f"{inputs.train_features}: {train_set.num_classes} label columns but the class list has "
            f"{len(inputs.classes)}; recompute the features with this class list"
        )
    weights = aligned_weights(train_set, inputs.weights, "weights") if inputs.weights else None
    # the samplers pad every process's share to the same length, so each has a batch when the file has a clip
    return train_loader(
        params, train_set, weights, seed=seed, rank=dist_info.rank, world_size=dist_info.world_size, device=device
    )


def resume(session: Session) -> None:
    """Continue after the last complete epoch (`last.pt`) when it was trained with these params and data;
    a run of other params or data is discarded and starts over."""
    last = session.out_dir / "last.pt"
    state = load_checkpoint(last) if last.is_file() else None
    _barrier(session.dist_info)  # every process has read the checkpoint before rank 0 may discard it
    if state is not None and state["fingerprint"] != session.fingerprint:
        if session.dist_info.main:
            print(f"{session.out_dir}: its checkpoints were trained with other params or data; starting over")
            discard_run(session.out_dir)
        state = None
    if state is None:
        return
    session.model.load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.scaler.load_state_dict(state["scaler"])
    session.history, session.step, session.best = state["history"], state["step"], state["best"]
    session.start_epoch = state["epoch"] + 1
    if session.dist_info.main:
        print(f"resuming {session.out_dir} after epoch {state['epoch']} (step {session.step})")


def for_training(session: Session) -> torch.nn.Module:
    """The model as the optimiser steps run it: compiled (train.compile), wrapped for DDP (several processes).
    Both share the model's parameters, so checkpoints and validation use the model itself."""
    trained = session.model
    if session.params.train.compile:
        trained = torch.compile(trained)
    if session.dist_info.world_size > 1:
        device = session.device
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )
    return trained


def seed_epoch(session: Session, epoch: int) -> torch.Generator:
    """Every random draw of `epoch` follows from (seed, epoch), so a resumed run repeats it exactly; returns
    the augmentation's generator."""
    torch.manual_seed(epoch_seed(session.seed, epoch))
    np.random.seed(epoch_seed(session.seed, epoch) % 2**32)
    session.loader.sampler.set_epoch(epoch)
    return torch.Generator(device=session.device).manual_seed(epoch_seed(session.seed, epoch))


def run_epoch(session: Session, trained: torch.nn.Module, epoch: int, run, progress: bool) -> dict:
    """One pass over this process's training batches; returns the epoch's history row so far (no validation)."""
    params, loader, world = session.params, session.loader, session.dist_info.world_size
    generator = seed_epoch(session, epoch)
    trained.train()
    started, waited, seen, loss_sum, batches = time.perf_counter(), 0.0, 0, 0.0, 0
    bar = tqdm(
        total=len(loader.sampler) * world,
        desc=f"epoch {epoch}/{params.train.epochs}",
        unit="clip",
        disable=not (progress and session.dist_info.main),
        mininterval=1.0,
    )
    fetched = time.perf_counter()
    sampler = loader.sampler
    session.drawn.extend(int(i) for i in (sampler.rows() if hasattr(sampler, "rows") else sampler))
    for x, y in device_batches(loader, params, session.inputs.norm, session.device, generator):
        waited += time.perf_counter() - fetched
        session.step += 1
        lr = learning_rate(params, epoch, session.step, len(loader))
        loss = train_step(trained, session.optimizer, session.scaler, x, y, lr, session.amp_dtype)
        if not math.isfinite(loss):
            raise PipelineError(
                f"non-finite training loss ({loss}) at step {session.step}, epoch {epoch}: "
                "lower train.lr or check the features and stats"
            )
        loss_sum, batches, seen = loss_sum + loss, batches + 1, seen + len(x) * world
        bar.update(len(x) * world)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if run is not None and session.dist_info.main and session.step % params.train.log_every == 0:
            run.log_metrics({"train_loss_step": loss, "lr": lr}, step=session.step)
        fetched = time.perf_counter()
    bar.close()
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch,
        "step": session.step,
        "lr": learning_rate(params, epoch, session.step, len(loader)),  # the rate of the epoch's last step
        "train_loss": loss_sum / max(batches, 1),
        "seconds": round(seconds, 3),
        "clips_per_second": seen / seconds if seconds else 0.0,
        "data_wait": waited / seconds if seconds else 0.0,
    }


def end_epoch(session: Session, row: dict, run) -> None:
    """The main process after an epoch: validate, keep the best, write the checkpoints and the history, log."""
    inputs = session.inputs
    row = {
        **row,
        **validate(
            session.model, session.params, inputs.val_features, inputs.norm, session.device, inputs.classes.mids
        ),
    }
    session.history.append(row)
    improved = "epoch" not in session.best or improves(row["val_mAP"], session.best["val_mAP"])
    if improved:
        session.best = {**row}
    save_epoch(session, row["epoch"], improved)
    write_history(session.out_dir / "history.csv", session.history)
    if run is not None:
        run.log_metrics(
            {k: v for k, v in row.items() if k not in ("epoch", "step")}, step=row["epoch"], notes=metric_notes(row)
        )
    print(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
        f"val mAP {row['val_mAP']:.4f}, {row['clips_per_second']:.0f} clips/s, "
        f"data wait {row['data_wait']:.0%}",
        flush=True,
    )


def save_epoch(session: Session, epoch: int, improved: bool) -> None:
    """The epoch's checkpoint (`epoch_NNN.pt`), `best.pt` when it improved, and `last.pt`, the resume point."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        **session.record,
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "scaler": session.scaler.state_dict(),
        "sampler": session.loader.sampler.state_dict(),
        "epoch": epoch,
        "step": session.step,
        "seed": session.seed,
        "history": [untimed(r) for r in session.history],  # timings: history.timing.csv, not the checkpoint
        "best": untimed(session.best),
        "fingerprint": session.fingerprint,
    }
    save_checkpoint(session.out_dir / f"epoch_{epoch:03d}.pt", payload)
    if improved:
        save_checkpoint(session.out_dir / "best.pt", payload)
    save_checkpoint(session.out_dir / "last.pt", payload)  # written after the epoch's own file


def write_rank_report(session: Session, folder: Path) -> None:
    """`rank<R>.json`: what this process drew and its final weights' digest."""
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "rank": session.dist_info.rank,
        "world_size": session.dist_info.world_size,
        "drawn": session.drawn,
        "weights": weights_digest(session.model),
    }
    (folder / f"rank{session.dist_info.rank}.json").write_text(json.dumps(report))


def finish(session: Session, run) -> None:
    """The main process when the epochs are done: best.pt restored if it went missing, the history, its
    curves and the best epoch logged."""
    out_dir, best, history = session.out_dir, session.best, session.history
    if not history:
        raise PipelineError(f"{out_dir}: no epoch trained (train.epochs={session.params.train.epochs})")
    if not (out_dir / "best.pt").is_file():  # removed by a workflow manager before a resumed run
        save_checkpoint(out_dir / "best.pt", load_checkpoint(out_dir / f"epoch_{best['epoch']:03d}.pt"))
    write_history(out_dir / "history.csv", history)
    plot_history(out_dir / "curves.png", history)
    if run is not None:
        run.log_artifact(out_dir / "history.csv")
        run.log_artifact(out_dir / "curves.png")
        run.log_metrics({"best_epoch": best["epoch"], "best_val_mAP": best["val_mAP"]}, notes=metric_notes(best))

"""Evaluation of trained runs: single models, weight averages and ensembles, as the paper's tables.

For each split of `evaluate.splits` (the eval split and the validation split) and each run (seed):

- `<run>/best`: the best single checkpoint (`best.pt`, chosen on validation mAP by the train stage),
- `<run>/last`: the last checkpoint (`last.pt`),
- `<run>/wa`: the weight-averaged model (the average stage's checkpoint),
- `<run>/checkpoint-ensemble`: the mean of the predictions of every epoch checkpoint of the run;

and over the runs:

- `seed-ensemble`: the mean of the predictions of the runs' weight-averaged models,
- `extra-ensemble` (when `evaluate.extra_members` names checkpoints of other runs or settings): the
  mean of those models' predictions and the runs' weight-averaged models' (the paper's 10-model ensemble).

Every epoch checkpoint is run once per split (best and last are among them, so their predictions are
reused); the checkpoint ensemble is accumulated epoch by epoch in float64, so memory holds a few
`[N, C]` arrays whatever the number of epochs. Ensembles average probabilities (float64 sum, then
float32). Labels come from the features files (the same file the scores come from, so clips align).

Metrics per model: macro mAP, mean AUC, d-prime (pipeline.core.metrics), the parameter count (for an
ensemble, the sum over its members: what inference runs) and the number of members.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_write_json, atomic_write_text
from pipeline.core.metric_values import NO_POSITIVES, json_ready, value_text
from pipeline.core.metrics import evaluate
from pipeline.core.predictions import write_predictions
from pipeline.data.classes import ClassList
from pipeline.evaluation import plots
from pipeline.evaluation.average import epoch_files
from pipeline.training.checkpoint import check_checkpoint, load_checkpoint, load_header, model_from_checkpoint
from pipeline.training.loader import Normaliser
from pipeline.training.model import count_parameters
from pipeline.training.predict import predict

SEED_ENSEMBLE = "seed-ensemble"
EXTRA_ENSEMBLE = "extra-ensemble"
KINDS = ("best", "last", "wa", "checkpoint-ensemble")
# the kinds drawn as levels beside the per-epoch curves
LEVEL_KINDS = ("wa", "checkpoint-ensemble", SEED_ENSEMBLE, EXTRA_ENSEMBLE)


# ----------------------------------------------------------------------------------------------
# inputs


@dataclass
class Split:
    """One evaluated split: its features file, clip ids and 0/1 labels `[N, C]`."""

    name: str
    features: Path
    clip_ids: list[str]
    labels: np.ndarray
    fbank_options: dict | None = None
    target_length: int | None = None


def load_split(name: str, features: str | Path, classes: ClassList, classes_source: str = "the class list") -> Split:
    features = Path(features)
    if not features.is_file():
        raise PipelineError(
            f"{features}: features file of split '{name}' not found (run the features stage, or "
            "drop the split from evaluate.splits)"
        )
    try:
        with h5py.File(features, "r") as handle:
            missing = [k for k in ("labels", "clip_id") if k not in handle]
            if missing:
                raise PipelineError(f"{features}: not a features file (no {', '.join(missing)})")
            file_classes = json.loads(handle.attrs["class_ids"]) if "class_ids" in handle.attrs else None
            labels = handle["labels"][()]
            clip_ids = [c.decode() if isinstance(c, bytes) else str(c) for c in handle["clip_id"][()]]
            options = json.loads(handle.attrs["fbank_options"]) if "fbank_options" in handle.attrs else None
            target = int(handle.attrs["target_length"]) if "target_length" in handle.attrs else None
    except OSError as err:
        raise PipelineError(f"{features}: cannot read as HDF5 ({str(err).splitlines()[0]})") from None
    if file_classes is not None and list(file_classes) != list(classes.mids):
        raise PipelineError(
            f"{features}: its {len(file_classes)} classes differ from the {len(classes)} of "
            f"{classes_source}; recompute the features with this class list"
        )
    if labels.ndim != 2 or labels.shape[1] != len(classes) or labels.shape[0] != len(clip_ids):
        raise PipelineError(
            f"{features}: labels of shape {labels.shape} for {len(clip_ids)} clips and {len(classes)} classes"
        )
    if not len(clip_ids):
        raise PipelineError(f"{features}: no clips to evaluate")
    if not labels.any(axis=0).any():
        raise PipelineError(f"{features}: no class has a positive clip; AP is undefined for every class")
    return Split(name, features, clip_ids, labels, options, target)


def check_scores(
    scores: np.ndarray, clip_ids: Sequence[str], class_ids: Sequence[str], split: Split, classes: ClassList, source: str
) -> np.ndarray:
    """Scores of `source` aligned with `split` (same clips, same order) and the class list, all finite;
    one-line errors otherwise. Rows in another order are reordered by clip id."""
    class_ids = [str(c) for c in class_ids]
    if class_ids != list(classes.mids):
        if len(class_ids) != len(classes):
            raise PipelineError(f"{source}: {len(class_ids)} classes, but the class list has {len(classes)}")
        first = next(i for i, (a, b) in enumerate(zip(class_ids, classes.mids)) if a != b)
        raise PipelineError(
            f"{source}: class ids differ from the class list: column {first + 1} is "
            f"'{class_ids[first]}', the class list has '{classes.mids[first]}'"
        )
    clip_ids = [str(c) for c in clip_ids]
    if clip_ids != split.clip_ids:
        row_of = {c: i for i, c in enumerate(clip_ids)}
        missing = [c for c in split.clip_ids if c not in row_of]
        if missing:
            raise PipelineError(
                f"{source}: no scores for clip {missing[0]} of {split.features} ({len(missing)} of "
                f"its {len(split.clip_ids)} clips missing)"
            )
        extra = len(clip_ids) - len(row_of)
        if extra:
            raise PipelineError(f"{source}: {extra} clip id(s) appear more than once")
        if len(clip_ids) != len(split.clip_ids):
            unknown = next(c for c in clip_ids if c not in set(split.clip_ids))
            raise PipelineError(f"{source}: clip {unknown} is not in {split.features}")
        scores = scores[[row_of[c] for c in split.clip_ids]]
    scores = np.asarray(scores)
    if scores.shape != split.labels.shape:
        raise PipelineError(f"{source}: scores of shape {scores.shape}, expected {split.labels.shape}")
    finite = np.isfinite(scores)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        col = int(np.flatnonzero(~finite[row])[0])
        raise PipelineError(
            f"{source}: non-finite score ({scores[row, col]}) for clip {split.clip_ids[row]}, class "
            f"{classes.mids[col]} on split '{split.name}'; the checkpoint is damaged or diverged"
        )
    return scores


# ----------------------------------------------------------------------------------------------
# predicting checkpoints


class Predictor:
    """Runs checkpoints on every split; counts each checkpoint run."""

    def __init__(
        self,
        params,
        splits: list[Split],
        classes: ClassList,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ):
        self.params, self.splits, self.classes = params, splits, classes
        self.device = torch.device(device)
        self.progress = progress
        self.calls: list[str] = []

    def check(self, path: Path, payload: dict) -> None:
        """The checkpoint fits the class list and every split's features (one-line errors otherwise)."""
        check_checkpoint(
            path,
            payload,
            "evaluation",
            class_ids=self.classes.mids,
            features={str(split.features): split.fbank_options for split in self.splits},
        )

    def __call__(self, path: str | Path, payload: dict | None = None) -> tuple[dict[str, np.ndarray], int]:
        """`({split: scores [N, C] float32}, parameter count)` of one checkpoint."""

        path = Path(path)
        payload = payload if payload is not None else load_checkpoint(path)
        self.check(path, payload)
        model = model_from_checkpoint(payload).to(self.device)
        norm = Normaliser(**payload["norm"])
        out = {}
        for split in self.splits:
            scores, _ = predict(model, self.params, split.features, norm, self.device, progress=self.progress)
            # predict() keeps the features file's row order: the split's clip ids
            out[split.name] = check_scores(scores, split.clip_ids, payload["class_ids"], split, self.classes, str(path))
        self.calls.append(str(path))
        return out, count_parameters(model)


# ----------------------------------------------------------------------------------------------
# the models and ensembles


@dataclass
class Entry:
    """One evaluated model or ensemble: its predictions on every split and what it is made of."""

    name: str
    kind: str
    members: int
    parameters: int
    scores: dict[str, np.ndarray]
    detail: dict = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)


@dataclass
class RunResult:
    label: str
    run_dir: Path
    seed: int | None
    epochs: list[int]
    epoch_mAP: dict[str, dict[int, float]]  # split -> epoch -> mAP


@dataclass
class Evaluation:
    splits: list[Split]
    classes: ClassList
    entries: dict[str, Entry]
    runs: list[RunResult]
    extra_members: list[str]
    checkpoint_runs: int = 0


class _Mean:
    """A running float64 sum of per-split score arrays."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.count = 0

    def add(self, scores: dict[str, np.ndarray]) -> None:
        for name, s in scores.items():
            if name in self.sums:
                self.sums[name] += s
            else:
                self.sums[name] = s.astype(np.float64)
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        return {name: (s / self.count).astype(np.float32) for name, s in self.sums.items()}


def ensemble(members: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean of several models' per-split predictions (float64 sum, float32 result)."""
    acc = _Mean()
    for m in members:
        acc.add(m)
    return acc.mean()


def _metrics(split: Split, scores: np.ndarray, classes: ClassList) -> dict:
    return evaluate(split.labels, scores, classes.mids)


def _header_epoch(path: Path) -> tuple:
    """`(epoch, fingerprint)` of a checkpoint, read without its weights."""
    header = load_header(path)
    return header.get("epoch"), header.get("fingerprint")


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    labels = [Path(r).resolve().name for r in run_dirs]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise PipelineError(f"{run_dirs[i]}: two runs are named '{label}'; give the run folders distinct names")
    return labels


def evaluate_runs(
    params,
    run_dirs: Sequence[str | Path],
    wa_paths: Sequence[str | Path],
    splits: list[Split],
    classes: ClassList,
    predictor: Predictor,
    extra_members: Sequence[str | Path] = (),
) -> Evaluation:
    """Predict and score every model and ensemble of the module docstring on every split."""

    labels = check_inputs(run_dirs, wa_paths, extra_members)
    runs = [
        score_run(params, label, run_dir, wa_path, splits, classes, predictor)
        for label, run_dir, wa_path in zip(labels, map(Path, run_dirs), map(Path, wa_paths))
    ]
    entries = {entry.name: entry for run in runs for entry in run.entries}
    extras = [Path(p) for p in extra_members]
    for spec in ensembles_over_runs(runs, extras, predictor):
        entries[spec.name] = ensemble_entry(spec)
    for entry in entries.values():
        for split in splits:
            entry.metrics[split.name] = _metrics(split, entry.scores[split.name], classes)
    return Evaluation(
        splits, classes, entries, [run.result for run in runs], [str(p) for p in extras], len(predictor.calls)
    )


def check_inputs(
    run_dirs: Sequence[str | Path], wa_paths: Sequence[str | Path], extra_members: Sequence[str | Path]
) -> list[str]:
    """The runs' labels (their folders' names); a one-line error for a missing input, before hours of predicting."""
    if not run_dirs:
        raise PipelineError("no run to evaluate (pass --runs)")
    if len(wa_paths) != len(run_dirs):
        raise PipelineError(
            f"{len(wa_paths)} weight-averaged checkpoints (--wa) for {len(run_dirs)} runs (--runs); "
            "pass one per run, in the same order"
        )
    labels = run_labels(run_dirs)
    for run_dir, wa_path in zip(map(Path, run_dirs), map(Path, wa_paths)):
        if not epoch_files(run_dir):
            raise PipelineError(f"{run_dir}: no epoch_NNN.pt checkpoint (run the train stage first)")
        if not wa_path.is_file():
            raise PipelineError(f"{wa_path}: checkpoint not found (run the average stage on {run_dir})")
    for path in map(Path, extra_members):
        if not path.exists():
            raise PipelineError(f"evaluate.extra_members: {path}: checkpoint not found")
    return labels


# ----------------------------------------------------------------------------------------------
# one run's models


@dataclass
class Member:
    """One model an ensemble can average: its checkpoint, its predictions on every split, its parameter count."""

    path: Path
    scores: dict[str, np.ndarray]
    parameters: int


@dataclass
class ScoredRun:
    """One run, predicted: its entries (`<run>/best`, `/last`, `/wa`, `/checkpoint-ensemble`), its models by
    kind (best, last, wa: what the ensembles over runs draw on) and its mAP per epoch."""

    result: RunResult
    entries: list[Entry]
    models: dict[str, Member]


@dataclass
class EpochPass:
    """One pass over a run's epoch checkpoints: the running mean of their predictions (the checkpoint
    ensemble), each epoch's mAP per split, the predictions of the epochs asked for (best's and last's, so
    those are not run again), the run's seed and the parameter count (the same at every epoch)."""

    epochs: list[int]
    mean: _Mean
    epoch_mAP: dict[str, dict[int, float]]
    kept: dict[int, dict[str, np.ndarray]]
    seed: int | None
    parameters: int


def score_run(
    params, label: str, run_dir: Path, wa_path: Path, splits: list[Split], classes: ClassList, predictor: Predictor
) -> ScoredRun:
    """Run every checkpoint of one run once, and build its four entries (without metrics)."""
    named = best_and_last(run_dir)
    epoch_of = {kind: _header_epoch(path)[0] for kind, path in named.items()}
    passed = predict_epochs(run_dir, set(epoch_of.values()), splits, classes, predictor)
    models, details = {}, {}
    for kind, path in named.items():
        scores = passed.kept.get(epoch_of[kind])
        if scores is None:  # its epoch file is gone: run the file itself
            scores, _ = predictor(path)
        models[kind] = Member(path, scores, passed.parameters)
        details[kind] = {"epoch": epoch_of[kind]}
    if params.data.validates_on_eval:
        details["best"]["chosen_on_eval"] = True  # marked wherever it is reported: not a clean eval number
    models["wa"], details["wa"] = weight_averaged(run_dir, wa_path, predictor)
    entries = [Entry(f"{label}/{kind}", kind, 1, m.parameters, m.scores, details[kind]) for kind, m in models.items()]
    entries.append(checkpoint_ensemble(label, passed))
    return ScoredRun(RunResult(label, run_dir, passed.seed, passed.epochs, passed.epoch_mAP), entries, models)


def best_and_last(run_dir: Path) -> dict[str, Path]:
    named = {kind: run_dir / f"{kind}.pt" for kind in ("best", "last")}
    for path in named.values():
        if not path.is_file():
            raise PipelineError(f"{path}: checkpoint not found (the train stage writes it; rerun it)")
    return named


def predict_epochs(
    run_dir: Path, keep: set, splits: list[Split], classes: ClassList, predictor: Predictor
) -> EpochPass:
    """Every epoch checkpoint of `run_dir`, run once, in epoch order; the predictions of the epochs in `keep`
    are kept, the others only added to the mean (memory holds a few `[N, C]` arrays whatever the epochs)."""
    files = epoch_files(run_dir)
    mean, kept = _Mean(), {}
    epoch_mAP: dict[str, dict[int, float]] = {s.name: {} for s in splits}
    parameters = seed = None
    for epoch, path in files.items():
        payload = load_checkpoint(path)
        seed = payload.get("seed", seed)
        scores, parameters = predictor(path, payload)
        del payload  # one checkpoint in memory at a time
        mean.add(scores)
        for split in splits:
            epoch_mAP[split.name][epoch] = _metrics(split, scores[split.name], classes)["mAP"]
        if epoch in keep:
            kept[epoch] = scores
    return EpochPass(list(files), mean, epoch_mAP, kept, seed, parameters)


def weight_averaged(run_dir: Path, wa_path: Path, predictor: Predictor) -> tuple[Member, dict]:
    """The run's weight-averaged model (the average stage's checkpoint), and the detail its entry reports."""
    payload = load_checkpoint(wa_path)
    if not payload.get("averaged_epochs"):
        raise PipelineError(f"{wa_path}: not a weight-averaged checkpoint (run the average stage on {run_dir})")
    scores, parameters = predictor(wa_path, payload)
    averaged = list(payload["averaged_epochs"])
    detail = {
        "averaged_epochs": len(averaged),
        "epochs": f"{min(averaged)}-{max(averaged)}",
        "bn_reestimated_batches": payload.get("bn_reestimated_batches", 0),
    }
    return Member(wa_path, scores, parameters), detail


def checkpoint_ensemble(label: str, passed: EpochPass) -> Entry:
    count = passed.mean.count
    return Entry(
        f"{label}/checkpoint-ensemble",
        "checkpoint-ensemble",
        count,
        passed.parameters * count,
        passed.mean.mean(),
        {"epochs": f"{min(passed.epochs)}-{max(passed.epochs)}"},
    )


# ----------------------------------------------------------------------------------------------
# the ensembles over runs


class EnsembleSpec(NamedTuple):
    """An ensemble to build: its name (also its kind), its members, and the detail its entry reports."""

    name: str
    members: list[Member]
    detail: dict


def ensembles_over_runs(runs: list[ScoredRun], extras: list[Path], predictor: Predictor) -> list[EnsembleSpec]:
    """The seed ensemble (the runs' weight-averaged models) and, with evaluate.extra_members, the extra
    ensemble (those models and the extra checkpoints, each run here)."""
    wa = [run.models["wa"] for run in runs]
    specs = [EnsembleSpec(SEED_ENSEMBLE, wa, {})]
    if extras:
        members = [*wa, *extra_models(extras, wa, predictor)]
        specs.append(EnsembleSpec(EXTRA_ENSEMBLE, members, {"extra_members": [str(p) for p in extras]}))
    return specs


def extra_models(paths: list[Path], taken: list[Member], predictor: Predictor) -> list[Member]:
    """The checkpoints of evaluate.extra_members, predicted; each model counts once in an ensemble."""
    used = {m.path.resolve(): m.path for m in taken}
    models = []
    for path in paths:
        if path.is_dir():
            raise PipelineError(
                f"evaluate.extra_members: {path} is a folder; name a checkpoint file (e.g. {path / 'wa.pt'})"
            )
        if path.resolve() in used:
            raise PipelineError(
                f"evaluate.extra_members: {path} is already a member ({used[path.resolve()]}); each model counts once"
            )
        used[path.resolve()] = path
        try:
            scores, parameters = predictor(path)
        except PipelineError as err:
            raise PipelineError(f"evaluate.extra_members: {err}") from None
        models.append(Member(path, scores, parameters))
    return models


def ensemble_entry(spec: EnsembleSpec) -> Entry:
    """The mean of the members' predictions; its parameters are the sum of theirs (what inference runs)."""
    return Entry(
        spec.name,
        spec.name,
        len(spec.members),
        sum(m.parameters for m in spec.members),
        ensemble([m.scores for m in spec.members]),
        spec.detail,
    )


# ----------------------------------------------------------------------------------------------
# outputs


def _entry_json(entry: Entry, split: str) -> dict:
    m = entry.metrics[split]
    out = {
        "mAP": m["mAP"],
        "mAUC": m["mAUC"],
        "d_prime": m["d_prime"],
        "parameters": entry.parameters,
        "members": entry.members,
    }
    if "epoch" in entry.detail:
        out["epoch"] = entry.detail["epoch"]
    if entry.detail.get("chosen_on_eval"):
        out["chosen_on_eval"] = True
    if "averaged_epochs" in entry.detail:
        out["averaged_epochs"] = entry.detail["averaged_epochs"]
    # why a value above is null (d-prime of a perfect ranking, no positives): only when one is
    out.update({k: v for k, v in m.items() if k.endswith("_note")})
    return out


def metrics_document(result: Evaluation) -> dict:
    """eval.json: the first split of evaluate.splits (the eval split) at the top level, one entry per model
    and ensemble; every further split (val) under its own name."""
    first, *others = result.splits
    doc = {name: _entry_json(entry, first.name) for name, entry in result.entries.items()}
    for split in others:
        doc[split.name] = {name: _entry_json(entry, split.name) for name, entry in result.entries.items()}
    return json_ready(doc)  # valid JSON whatever a metric is: null, never a bare NaN or Infinity


def per_class_csv(result: Evaluation, split: Split) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(result.entries)
    writer.writerow(["index", "mid", "display_name", "positives", *names])
    positives = split.labels.sum(axis=0, dtype=np.int64)
    for i, (mid, display) in enumerate(zip(result.classes.mids, result.classes.names)):
        aps = [result.entries[n].metrics[split.name]["per_class_AP"][mid] for n in names]
        writer.writerow([i, mid, display, int(positives[i]), *("" if v is None else f"{v:.6f}" for v in aps)])
    return buffer.getvalue()


def _fmt(value, spec: str) -> str:
    return value_text(value, spec)


def _params_text(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k" if n >= 1000 else str(n)


def _shown_name(name: str, entry: Entry) -> str:
    """The model column of the table: the name, and the epoch or epochs the model is made of."""
    if entry.detail.get("chosen_on_eval"):
        return f"{name} (epoch {entry.detail['epoch']}, chosen on eval*)"
    if "epoch" in entry.detail:
        return f"{name} (epoch {entry.detail['epoch']})"
    if entry.kind in ("wa", "checkpoint-ensemble"):
        return f"{name} (epochs {entry.detail['epochs']})"
    return name


def summary_table(result: Evaluation, split: Split) -> str:
    """The paper's table: model, members, parameters, mAP, AUC, d-prime."""
    first = next(iter(result.entries.values())).metrics[split.name]
    shown = {name: _shown_name(name, entry) for name, entry in result.entries.items()}
    width = max(len("model"), *map(len, shown.values()))
    lines = [
        f"split {split.name}: {first['n_clips']} clips, {first['n_scored_classes']} of {first['n_classes']} "
        f"classes with a positive clip ({split.features})",
        f"{'model':<{width}} {'members':>7} {'params':>8} {'mAP':>7} {'AUC':>7} {'d-prime':>8}",
    ]
    notes: dict[str, str] = {}
    for name, entry in result.entries.items():
        m = entry.metrics[split.name]
        d = "inf" if m["d_prime"] is None and m["mAUC"] == 1.0 else _fmt(m["d_prime"], ".3f")
        d = "-inf" if m["d_prime"] is None and m["mAUC"] == 0.0 else d
        lines.append(
            f"{shown[name]:<{width}} {entry.members:>7} {_params_text(entry.parameters):>8} "
            f"{_fmt(m['mAP'], '.4f'):>7} {_fmt(m['mAUC'], '.4f'):>7} {d:>8}"
        )
        for key, label in (("mAP", "mAP"), ("mAUC", "AUC"), ("d_prime", "d-prime")):
            if m.get(f"{key}_note"):
                notes.setdefault(f"{label} {m[f'{key}_note']}", name)
    # a cell that is inf or n/a says why below the table, once per reason (with the first model it is for)
    lines += [f"  {text} (e.g. {name})" for text, name in notes.items()]
    if any(e.detail.get("chosen_on_eval") for e in result.entries.values()):
        lines.append(
            "  * chosen on eval (data.audioset.val: eval): validation watched the eval split, so this "
            "is not a clean eval number; report last, wa or the ensembles"
        )
    return "\n".join(lines)


@dataclass
class Outputs:
    metrics: Path
    per_class: dict[str, Path]
    summary: Path
    predictions: dict[str, dict[str, Path]]
    plots: list[Path]


def write_outputs(
    result: Evaluation,
    out_dir: str | Path,
    plots_dir: str | Path | None = None,
    predictions_dir: str | Path | None = None,
) -> Outputs:
    """eval.json, per_class_ap_<split>.csv and summary.txt in `out_dir`; predictions
    `<predictions_dir>/<split>/<model>.npz`; plots (PNG + CSV) in `<plots_dir>/<split>/`."""

    out_dir = Path(out_dir)
    plots_dir = Path(plots_dir) if plots_dir else out_dir / "plots"
    predictions = write_prediction_files(result, Path(predictions_dir) if predictions_dir else out_dir / "predictions")
    metrics = out_dir / "eval.json"
    atomic_write_json(metrics, metrics_document(result))
    per_class = {split.name: out_dir / f"per_class_ap_{split.name}.csv" for split in result.splits}
    for split in result.splits:
        atomic_write_text(per_class[split.name], per_class_csv(result, split))
    summary = out_dir / "summary.txt"
    atomic_write_text(summary, "\n\n".join(summary_table(result, s) for s in result.splits) + "\n")
    written = [path for split in result.splits for path in split_plots(result, split, plots_dir / split.name)]
    return Outputs(metrics, per_class, summary, predictions, written)


def write_prediction_files(result: Evaluation, predictions_dir: Path) -> dict[str, dict[str, Path]]:
    """Every model's predictions on every split, `<predictions_dir>/<split>/<model>.npz`: split -> model -> path."""
    predictions: dict[str, dict[str, Path]] = {}
    for split in result.splits:
        predictions[split.name] = {}
        for name, entry in result.entries.items():
            path = predictions_dir / split.name / f"{name}.npz"
            write_predictions(path, entry.scores[split.name], split.clip_ids, result.classes.mids)
            predictions[split.name][name] = path
    return predictions


def headline_model(result: Evaluation) -> str:
    """The model the per-class plots show: the largest ensemble evaluated."""
    return EXTRA_ENSEMBLE if EXTRA_ENSEMBLE in result.entries else SEED_ENSEMBLE


def split_plots(result: Evaluation, split: Split, folder: Path) -> list[Path]:
    """One split's plots: the headline model's per-class AP and precision-recall curves, and each run's mAP
    per epoch beside the levels of the weight-averaged models and the ensembles."""
    headline = headline_model(result)
    entry = result.entries[headline]
    metrics, title = entry.metrics[split.name], f"{headline}, {split.name}"
    levels = {name: e.metrics[split.name]["mAP"] for name, e in result.entries.items() if e.kind in LEVEL_KINDS}
    return [
        *plots.per_class_ap(folder / "per_class_ap", split.labels, metrics, result.classes, title),
        *plots.pr_curves(folder / "pr_curves", split.labels, entry.scores[split.name], metrics, result.classes, title),
        *plots.map_per_epoch(
            folder / "map_per_epoch",
            {r.label: r.epoch_mAP[split.name] for r in result.runs},
            levels,
            f"mAP per epoch, {split.name}",
        ),
    ]


# ----------------------------------------------------------------------------------------------
# tracking


def find_train_runs(run, seeds: Sequence[int | None]) -> dict[int, str]:
    """MLflow run ids of the train stage's seed runs (tags stage=train, role=seed, seed=k) in the evaluate
    run's experiment: the latest finished one per seed (else the latest). Empty without tracking."""
    found = {}
    for seed in seeds:
        if seed is None:
            continue
        candidates = run.search_siblings(f"tags.stage = 'train' and tags.role = 'seed' and tags.seed = '{int(seed)}'")
        if candidates:
            finished = [r for r in candidates if r.info.status == "FINISHED"]
            found[int(seed)] = (finished or candidates)[0].info.run_id
    return found


def log_evaluation(run, result: Evaluation, outputs: Outputs) -> dict[int, str]:
    """Metrics, tags (the seed runs summarised) and artifacts of one evaluation, on an MLflow run."""
    train_runs = find_train_runs(run, [r.seed for r in result.runs])
    run.set_tags(run_tags(result, train_runs))
    for split in result.splits:
        log_epoch_curves(run, result, split)
    metrics, notes = entry_metrics(result)
    run.log_metrics(metrics, notes=notes)
    run.log_params({"extra_members": ",".join(result.extra_members) or "none"})
    run.log_artifact(outputs.metrics)
    run.log_artifact(outputs.summary)
    for path in outputs.per_class.values():
        run.log_artifact(path)
    for path in outputs.plots:
        run.log_artifact(path, f"plots/{path.parent.name}")
    return train_runs


def run_tags(result: Evaluation, train_runs: dict[int, str]) -> dict[str, str]:
    """The runs and seeds evaluated, and the train stage's run of each seed (what this evaluation summarises)."""
    tags = {"runs": ",".join(r.label for r in result.runs), "seeds": ",".join(str(r.seed) for r in result.runs)}
    for r in result.runs:
        if r.seed in train_runs:
            tags[f"train_run.{r.label}"] = train_runs[r.seed]
    if train_runs:
        tags["summarises"] = ",".join(train_runs[r.seed] for r in result.runs if r.seed in train_runs)
    return tags


def log_epoch_curves(run, result: Evaluation, split: Split) -> None:
    """Each run's mAP per epoch on `split`, one step per epoch."""
    epochs = sorted({e for r in result.runs for e in r.epoch_mAP[split.name]})
    for epoch in epochs:
        run.log_metrics(
            {
                f"{split.name}/{r.label}/epoch_mAP": r.epoch_mAP[split.name][epoch]
                for r in result.runs
                if epoch in r.epoch_mAP[split.name]
            },
            step=epoch,
            notes={f"{split.name}/{r.label}/epoch_mAP": NO_POSITIVES for r in result.runs},
        )


def entry_metrics(result: Evaluation) -> tuple[dict[str, float | None], dict[str, str]]:
    """`<split>/<model>/<metric>` of every model and ensemble, and the note of each null value."""
    metrics, notes = {}, {}
    for split in result.splits:
        for name, entry in result.entries.items():
            m = entry.metrics[split.name]
            for key in ("mAP", "mAUC", "d_prime"):
                # a null value is not logged; Run.log_metrics tags the run with its note instead
                metrics[f"{split.name}/{name}/{key}"] = m[key]
                if m.get(f"{key}_note"):
                    notes[f"{split.name}/{name}/{key}"] = m[f"{key}_note"]
    return metrics, notes

"""Evaluation of trained runs: single models, weight averages and ensembles, as the paper's tables.

For each split of `evaluate.splits` (the eval split and the validation split) and each run (seed):

- `<run>/best`: the best single checkpoint (`best.pt`, chosen on validation mAP by the train stage),
- `<run>/last`: the last checkpoint (`last.pt`),
- `<run>/wa`: the weight-averaged model (the average stage's checkpoint),
- `<run>/checkpoint-ensemble`: the mean of the predictions of every epoch checkpoint of the run,
- `<run>/last5-mean`: the mean of the run's per-epoch validation mAP over its last five epochs, read from
  its training history (`last.pt`): the official AudioSet "single model" figure (psla `src/run.py`, which
  validates on eval). It has no predictions of its own, so it is reported once (with the first split, and
  the split it was measured on) and left out of the prediction files, per-class CSVs and plots;

and over the runs:

- `seed-ensemble`: the mean of the predictions of the runs' weight-averaged models (our option),
- `last-ensemble`: the mean of the predictions of the runs' last models (the official multi-run
  ensemble: psla `src/ensemble/ensemble.py` averages "the last model of each run"),
- `extra-ensemble` (when `evaluate.extra_members` names checkpoints of other runs or settings): the
  mean of those models' predictions and the runs' weight-averaged models'.

`evaluate_members` scores given checkpoints alone, without runs (`member-<i>` each, `members-ensemble`
their mean): e.g. the ten imported released models of the official 10-model ensemble.

Every epoch checkpoint is run once per split (best and last are among them, so their predictions are
reused); the checkpoint ensemble is accumulated epoch by epoch in float64, so memory holds a few
`[N, C]` arrays whatever the number of epochs. Ensembles average probabilities (float64 sum, then
float32). Labels come from the features files (the same file the scores come from, so clips align).

Metrics per model: macro mAP, mean AUC, d-prime (pipeline.core.metrics), the parameter count (for an
ensemble, the sum over its members: what inference runs) and the number of members. The headline
(`evaluate.headline`: the MLflow parent run's metrics, the first lines of the summary, the model of the
per-class plots) names kinds of entry. Each entry records the checkpoint files it is made of
(`Entry.checkpoints`), with which its per-class decision thresholds are written
(pipeline/evaluation/thresholds.py).
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
from pipeline.core.metric_values import (
    NO_POSITIVES,
    is_finite,
    json_ready,
    non_finite_note,
    summary_notes,
    value_text,
)
from pipeline.core.metrics import d_prime, evaluate
from pipeline.core.params import Evaluate
from pipeline.core.predictions import write_predictions
from pipeline.data.classes import ClassList
from pipeline.evaluation import plots
from pipeline.evaluation.average import epoch_files
from pipeline.training.checkpoint import check_checkpoint, load_checkpoint, load_header, model_from_checkpoint
from pipeline.training.loader import Normaliser
from pipeline.training.model import count_parameters
from pipeline.training.predict import predict

SEED_ENSEMBLE = "seed-ensemble"
LAST_ENSEMBLE = "last-ensemble"
EXTRA_ENSEMBLE = "extra-ensemble"
LAST5 = "last5-mean"
MEMBER = "member"
MEMBERS_ENSEMBLE = "members-ensemble"
# the kinds drawn as levels beside the per-epoch curves
LEVEL_KINDS = ("wa", "checkpoint-ensemble", SEED_ENSEMBLE, LAST_ENSEMBLE, EXTRA_ENSEMBLE)
LAST_EPOCHS = 5  # the official single-model figure averages the last five epochs' mAP (psla src/run.py)
DEFAULT_HEADLINE = tuple(Evaluate().headline)


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
    metrics: dict[str, dict] = field(default_factory=dict)  # split -> metrics, for each split it is reported on
    # the checkpoint files it is made of, as given (a member's, an ensemble's members' in order; none for a
    # history mean): what its thresholds (pipeline/evaluation/thresholds.py) are recorded with
    checkpoints: tuple[str, ...] = ()

    @property
    def scored(self) -> bool:
        """Whether it has predictions of its own (a last5-mean has only its run's history)."""
        return bool(self.scores)


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
    headline_kinds: tuple[str, ...] = DEFAULT_HEADLINE  # evaluate.headline
    members: list[str] = field(default_factory=list)  # evaluate_members' checkpoints

    def reported_on(self, split: str) -> dict[str, Entry]:
        """The entries reported with `split`: every scored one, and the history means with the first split."""
        return {name: e for name, e in self.entries.items() if split in e.metrics}

    def scored_entries(self) -> dict[str, Entry]:
        return {name: e for name, e in self.entries.items() if e.scored}


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
    score_entries(entries, splits, classes)
    return Evaluation(
        splits,
        classes,
        entries,
        [run.result for run in runs],
        [str(p) for p in extras],
        len(predictor.calls),
        tuple(params.evaluate.headline),
    )


def evaluate_members(
    members: Sequence[str | Path], splits: list[Split], classes: ClassList, predictor: Predictor
) -> Evaluation:
    """Given checkpoints alone, without training runs: each one (`member-<i>`, in the order given) and the
    mean of their predictions (`members-ensemble`), e.g. the imported released models of the official
    10-model ensemble. Each runs with the model config and normalisation of its own checkpoint."""
    paths = [Path(p) for p in members]
    if not paths:
        raise PipelineError("no checkpoint to evaluate (pass --members CKPT [CKPT ...])")
    for path in paths:
        if not path.exists():
            raise PipelineError(f"--members: {path}: checkpoint not found")
    models = extra_models(paths, [], predictor, "--members")
    entries = {
        f"{MEMBER}-{i}": Entry(
            f"{MEMBER}-{i}", MEMBER, 1, m.parameters, m.scores, {"checkpoint": str(m.path)}, checkpoints=(str(m.path),)
        )
        for i, m in enumerate(models, 1)
    }
    entries[MEMBERS_ENSEMBLE] = ensemble_entry(EnsembleSpec(MEMBERS_ENSEMBLE, models, {}))
    score_entries(entries, splits, classes)
    return Evaluation(
        splits, classes, entries, [], [], len(predictor.calls), (MEMBERS_ENSEMBLE,), [str(p) for p in paths]
    )


def score_entries(entries: dict[str, Entry], splits: list[Split], classes: ClassList) -> None:
    """The metrics of every entry with predictions, on every split (a history mean has its own already)."""
    for entry in entries.values():
        if entry.scored:
            for split in splits:
                entry.metrics[split.name] = _metrics(split, entry.scores[split.name], classes)


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
    files: list[Path] = field(default_factory=list)  # the epoch checkpoints, in epoch order


def score_run(
    params, label: str, run_dir: Path, wa_path: Path, splits: list[Split], classes: ClassList, predictor: Predictor
) -> ScoredRun:
    """Run every checkpoint of one run once, and build its entries: best, last, wa, checkpoint-ensemble
    (without metrics) and last5-mean (with its metrics, from the history)."""
    named = best_and_last(run_dir)
    headers = {kind: load_header(path) for kind, path in named.items()}  # without the weights
    epoch_of = {kind: header.get("epoch") for kind, header in headers.items()}
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
    entries = [
        Entry(f"{label}/{kind}", kind, 1, m.parameters, m.scores, details[kind], checkpoints=(str(m.path),))
        for kind, m in models.items()
    ]
    entries.append(checkpoint_ensemble(label, passed))
    measured_on = "eval" if params.data.validates_on_eval else "val"
    entries.append(last_five_mean(label, headers["last"].get("history"), passed.parameters, measured_on, splits[0]))
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
    return EpochPass(list(files), mean, epoch_mAP, kept, seed, parameters, list(files.values()))


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
        checkpoints=tuple(str(path) for path in passed.files),
    )


def last_five_mean(label: str, history: list[dict] | None, parameters: int, measured_on: str, first: Split) -> Entry:
    """`<run>/last5-mean`: the mean of the run's per-epoch validation mAP and mAUC over its last five epochs
    (all of them when it has fewer), d-prime of that mAUC, as psla `src/run.py` reports its AudioSet single
    model; `measured_on` says which split the validation watched. Reported with the `first` split."""
    rows = list(history or [])[-LAST_EPOCHS:]
    m_ap, ap_note = history_mean(rows, "val_mAP")
    m_auc, auc_note = history_mean(rows, "val_mAUC")
    metrics = {"mAP": m_ap, "mAUC": m_auc, "d_prime": d_prime(m_auc) if is_finite(m_auc) else None}
    d_note = summary_notes(0.0, m_auc).get("d_prime_note")  # d-prime's note only: infinite, or mAUC undefined
    for key, note in (("mAP", ap_note), ("mAUC", auc_note), ("d_prime", d_note)):
        if note:
            metrics[key] = None
            metrics[f"{key}_note"] = note
    epochs = [row.get("epoch") for row in rows]
    detail = {"measured_on": measured_on, "mean_of_epochs": len(rows)}
    if rows:
        detail["epochs"] = f"{min(epochs)}-{max(epochs)}"
    if rows and len(rows) < LAST_EPOCHS:
        detail["note"] = f"the run has {len(rows)} epochs, fewer than {LAST_EPOCHS}: the mean of all {len(rows)}"
    return Entry(f"{label}/{LAST5}", LAST5, 1, parameters, {}, detail, {first.name: metrics})


def history_mean(rows: list[dict], key: str) -> tuple[float | None, str | None]:
    """The mean of `key` over history rows, or None and why: no history, a missing or an undefined value."""
    if not rows:
        return None, "missing (last.pt holds no training history)"
    values = []
    for row in rows:
        value = row.get(key)
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            return None, f"missing (epoch {row.get('epoch')} has no {key} in the history)"
    for row, value in zip(rows, values):
        if not np.isfinite(value):  # history.csv's nan: that epoch's validation had no positive clip
            return None, f"undefined (the {key} of epoch {row.get('epoch')} is {non_finite_note(value)})"
    return float(np.mean(values)), None


# ----------------------------------------------------------------------------------------------
# the ensembles over runs


class EnsembleSpec(NamedTuple):
    """An ensemble to build: its name (also its kind), its members, and the detail its entry reports."""

    name: str
    members: list[Member]
    detail: dict


def ensembles_over_runs(runs: list[ScoredRun], extras: list[Path], predictor: Predictor) -> list[EnsembleSpec]:
    """The seed ensemble (the runs' weight-averaged models, our option), the last ensemble (the runs' last
    models: the official multi-run ensemble) and, with evaluate.extra_members, the extra ensemble (the WA
    models and the extra checkpoints, each run here)."""
    wa = [run.models["wa"] for run in runs]
    specs = [
        EnsembleSpec(SEED_ENSEMBLE, wa, {}),
        EnsembleSpec(LAST_ENSEMBLE, [run.models["last"] for run in runs], {}),
    ]
    if extras:
        members = [*wa, *extra_models(extras, wa, predictor)]
        specs.append(EnsembleSpec(EXTRA_ENSEMBLE, members, {"extra_members": [str(p) for p in extras]}))
    return specs


def extra_models(
    paths: list[Path], taken: list[Member], predictor: Predictor, source: str = "evaluate.extra_members"
) -> list[Member]:
    """The checkpoints of `source` (evaluate.extra_members, --members), predicted; each model counts once
    in an ensemble."""
    used = {m.path.resolve(): m.path for m in taken}
    models = []
    for path in paths:
        if path.is_dir():
            raise PipelineError(f"{source}: {path} is a folder; name a checkpoint file (e.g. {path / 'wa.pt'})")
        if path.resolve() in used:
            raise PipelineError(
                f"{source}: {path} is already a member ({used[path.resolve()]}); each model counts once"
            )
        used[path.resolve()] = path
        try:
            scores, parameters = predictor(path)
        except PipelineError as err:
            raise PipelineError(f"{source}: {err}") from None
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
        checkpoints=tuple(str(m.path) for m in spec.members),
    )


# ----------------------------------------------------------------------------------------------
# outputs


# what an entry's detail adds to its eval.json record, when it has it
REPORTED_DETAIL = ("epoch", "epochs", "averaged_epochs", "measured_on", "mean_of_epochs", "checkpoint", "note")


def _entry_json(entry: Entry, split: str) -> dict:
    m = entry.metrics[split]
    out = {
        "mAP": m["mAP"],
        "mAUC": m["mAUC"],
        "d_prime": m["d_prime"],
        "parameters": entry.parameters,
        "members": entry.members,
    }
    out.update({key: entry.detail[key] for key in REPORTED_DETAIL if key in entry.detail})
    if entry.detail.get("chosen_on_eval"):
        out["chosen_on_eval"] = True
    # why a value above is null (d-prime of a perfect ranking, no positives): only when one is
    out.update({k: v for k, v in m.items() if k.endswith("_note")})
    return out


def metrics_document(result: Evaluation) -> dict:
    """eval.json: the first split of evaluate.splits (the eval split) at the top level, one entry per model
    and ensemble, and the history means (`<run>/last5-mean`, with the split they were measured on); every
    further split (val) under its own name."""
    first, *others = result.splits
    doc = section(result, first.name)
    for split in others:
        doc[split.name] = section(result, split.name)
    return json_ready(doc)  # valid JSON whatever a metric is: null, never a bare NaN or Infinity


def section(result: Evaluation, split: str) -> dict:
    """One split's part of eval.json: the record of every entry reported with it."""
    return {name: _entry_json(entry, split) for name, entry in result.reported_on(split).items()}


def per_class_csv(result: Evaluation, split: Split) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(result.scored_entries())
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
    if entry.kind == LAST5:
        return f"{name} ({_history_span(entry.detail)}, on {entry.detail['measured_on']})"
    if entry.kind == MEMBER:
        return f"{name} ({Path(entry.detail['checkpoint']).name})"
    return name


def _history_span(detail: dict) -> str:
    count = detail["mean_of_epochs"]
    if not count:
        return "no history"
    return f"epochs {detail['epochs']}" + (f": only {count}" if count < LAST_EPOCHS else "")


def summary_table(result: Evaluation, split: Split) -> str:
    """The paper's table: model, members, parameters, mAP, AUC, d-prime."""
    entries = result.reported_on(split.name)
    first = next(iter(result.scored_entries().values())).metrics[split.name]
    shown = {name: _shown_name(name, entry) for name, entry in entries.items()}
    width = max(len("model"), *map(len, shown.values()))
    lines = [
        f"split {split.name}: {first['n_clips']} clips, {first['n_scored_classes']} of {first['n_classes']} "
        f"classes with a positive clip ({split.features})",
        f"{'model':<{width}} {'members':>7} {'params':>8} {'mAP':>7} {'AUC':>7} {'d-prime':>8}",
    ]
    notes: dict[str, str] = {}
    for name, entry in entries.items():
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
    if any(e.kind == LAST5 for e in entries.values()):
        lines.append(
            f"  last5-mean: the mean of a run's validation mAP over its last {LAST_EPOCHS} epochs (its training "
            "history; the official AudioSet single-model figure), measured on val or eval as shown"
        )
    if any(e.detail.get("chosen_on_eval") for e in entries.values()):
        lines.append(
            "  * chosen on eval (data.audioset.val: eval): validation watched the eval split, so this "
            "is not a clean eval number; report last, wa or the ensembles"
        )
    return "\n".join(lines)


def headline_lines(result: Evaluation) -> list[str]:
    """The summary's first lines: the mAP of each headline entry (evaluate.headline)."""
    names = headline_names(result)
    shown = {name: _shown_name(name, result.entries[name]) for name in names}
    width = max(map(len, shown.values()))
    lines = [f"headline ({', '.join(result.headline_kinds)}):"]
    for name in names:
        measured, m = headline_values(result, name)
        lines.append(f"  {shown[name]:<{width}}  {measured} mAP {value_text(m['mAP'], '.4f', m.get('mAP_note'))}")
    return lines


def summary_text(result: Evaluation) -> str:
    """summary.txt, as the stage prints it: the headline, then one table per split."""
    tables = [summary_table(result, split) for split in result.splits]
    return "\n\n".join(["\n".join(headline_lines(result)), *tables])


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
    atomic_write_text(summary, summary_text(result) + "\n")
    written = [path for split in result.splits for path in split_plots(result, split, plots_dir / split.name)]
    return Outputs(metrics, per_class, summary, predictions, written)


def write_prediction_files(result: Evaluation, predictions_dir: Path) -> dict[str, dict[str, Path]]:
    """Every model's predictions on every split, `<predictions_dir>/<split>/<model>.npz`: split -> model -> path."""
    predictions: dict[str, dict[str, Path]] = {}
    for split in result.splits:
        predictions[split.name] = {}
        for name, entry in result.scored_entries().items():
            path = predictions_dir / split.name / f"{name}.npz"
            write_predictions(path, entry.scores[split.name], split.clip_ids, result.classes.mids)
            predictions[split.name][name] = path
    return predictions


# ----------------------------------------------------------------------------------------------
# the headline


def headline_names(result: Evaluation) -> list[str]:
    """The entries of the headline kinds (evaluate.headline), kind by kind, each run's in run order; when
    none of those kinds was evaluated, the largest ensemble."""
    kinds = dict.fromkeys(result.headline_kinds)
    names = [name for kind in kinds for name, entry in result.entries.items() if entry.kind == kind]
    return names or [largest_scored(result)]


def largest_scored(result: Evaluation) -> str:
    """The entry with predictions and the most members (the last of those, so an ensemble over runs)."""
    scored = list(result.scored_entries().items())
    return max(reversed(scored), key=lambda item: item[1].members)[0]


def headline_split(result: Evaluation) -> str:
    """The split the headline reports: eval when evaluated, else the first."""
    return next((s.name for s in result.splits if s.name == "eval"), result.splits[0].name)


def headline_values(result: Evaluation, name: str) -> tuple[str, dict]:
    """`(split, metrics)` of one headline entry: the headline split's, or a history mean's own split."""
    entry = result.entries[name]
    if entry.scored:
        split = headline_split(result)
        return split, entry.metrics[split]
    return entry.detail["measured_on"], next(iter(entry.metrics.values()))


def headline_metrics(result: Evaluation) -> tuple[dict[str, float | None], dict[str, str]]:
    """The MLflow parent run's metrics: `<split>_mAP/<entry>` of each headline entry, and the note of each
    null value."""
    metrics, notes = {}, {}
    for name in headline_names(result):
        split, m = headline_values(result, name)
        metrics[f"{split}_mAP/{name}"] = m["mAP"]
        if m.get("mAP_note"):
            notes[f"{split}_mAP/{name}"] = m["mAP_note"]
    return metrics, notes


def headline_model(result: Evaluation) -> str:
    """The model the per-class plots show: the last headline kind with predictions (the first run's)."""
    names = [name for name in headline_names(result) if result.entries[name].scored] or [largest_scored(result)]
    kind = result.entries[names[-1]].kind
    return next(name for name in names if result.entries[name].kind == kind)


def split_plots(result: Evaluation, split: Split, folder: Path) -> list[Path]:
    """One split's plots: the headline model's per-class AP and precision-recall curves, and each run's mAP
    per epoch beside the levels of the weight-averaged models and the ensembles (with runs only)."""
    headline = headline_model(result)
    entry = result.entries[headline]
    metrics, title = entry.metrics[split.name], f"{headline}, {split.name}"
    written = [
        *plots.per_class_ap(folder / "per_class_ap", split.labels, metrics, result.classes, title),
        *plots.pr_curves(folder / "pr_curves", split.labels, entry.scores[split.name], metrics, result.classes, title),
    ]
    if result.runs:
        levels = {
            name: e.metrics[split.name]["mAP"] for name, e in result.scored_entries().items() if e.kind in LEVEL_KINDS
        }
        written += plots.map_per_epoch(
            folder / "map_per_epoch",
            {r.label: r.epoch_mAP[split.name] for r in result.runs},
            levels,
            f"mAP per epoch, {split.name}",
        )
    return written


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
    if result.members:
        run.log_params({"members": ",".join(result.members)})
    run.log_artifact(outputs.metrics)
    run.log_artifact(outputs.summary)
    for path in outputs.per_class.values():
        run.log_artifact(path)
    for path in outputs.plots:
        run.log_artifact(path, f"plots/{path.parent.name}")
    return train_runs


def run_tags(result: Evaluation, train_runs: dict[int, str]) -> dict[str, str]:
    """The runs and seeds evaluated, and the train stage's run of each seed (what this evaluation summarises);
    for checkpoints evaluated alone (evaluate_members), their number."""
    if not result.runs:
        return {"members": str(len(result.members))}
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
    """`<split>/<model>/<metric>` of every model and ensemble, and the note of each null value; a history
    mean (`<run>/last5-mean`) under the split it was measured on."""
    metrics, notes = {}, {}
    for split in result.splits:
        for name, entry in result.reported_on(split.name).items():
            m = entry.metrics[split.name]
            measured = split.name if entry.scored else entry.detail["measured_on"]
            for key in ("mAP", "mAUC", "d_prime"):
                # a null value is not logged; Run.log_metrics tags the run with its note instead
                metrics[f"{measured}/{name}/{key}"] = m[key]
                if m.get(f"{key}_note"):
                    notes[f"{measured}/{name}/{key}"] = m[f"{key}_note"]
    return metrics, notes

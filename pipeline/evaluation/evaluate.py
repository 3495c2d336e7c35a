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

Metrics per model: macro mAP, mean AUC, d-prime (pipeline.evaluation.score), the parameter count (for an
ensemble, the sum over its members: what inference runs) and the number of members.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_write_json, atomic_write_text
from pipeline.core.metric_values import NO_POSITIVES, json_ready, value_text
from pipeline.core.predictions import write_predictions
from pipeline.data.classes import ClassList
from pipeline.evaluation import plots
from pipeline.evaluation.average import epoch_files
from pipeline.evaluation.score import evaluate
from pipeline.training.loader import Normaliser
from pipeline.training.model import count_parameters
from pipeline.training.train import load_checkpoint, model_from_checkpoint, predict

SEED_ENSEMBLE = "seed-ensemble"
EXTRA_ENSEMBLE = "extra-ensemble"
KINDS = ("best", "last", "wa", "checkpoint-ensemble")


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
        if list(payload["class_ids"]) != list(self.classes.mids):
            raise PipelineError(
                f"{path}: the checkpoint's {len(payload['class_ids'])} classes differ from the "
                f"{len(self.classes)} of the class list; evaluate models trained on this class list"
            )
        for split in self.splits:
            if (
                split.fbank_options is not None
                and payload.get("fbank_options") is not None
                and json.dumps(split.fbank_options, sort_keys=True)
                != json.dumps(payload["fbank_options"], sort_keys=True)
            ):
                raise PipelineError(
                    f"{path}: trained on features of other fbank options than {split.features}; "
                    "recompute the features with the run's features params"
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
    payload = load_checkpoint(path)
    return payload.get("epoch"), payload.get("fingerprint")


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

    if not run_dirs:
        raise PipelineError("no run to evaluate (pass --runs)")
    if len(wa_paths) != len(run_dirs):
        raise PipelineError(
            f"{len(wa_paths)} weight-averaged checkpoints (--wa) for {len(run_dirs)} runs (--runs); "
            "pass one per run, in the same order"
        )
    labels = run_labels(run_dirs)
    for run_dir, wa_path in zip(map(Path, run_dirs), map(Path, wa_paths)):  # fail before hours of predicting
        if not epoch_files(run_dir):
            raise PipelineError(f"{run_dir}: no epoch_NNN.pt checkpoint (run the train stage first)")
        if not wa_path.is_file():
            raise PipelineError(f"{wa_path}: checkpoint not found (run the average stage on {run_dir})")
    for path in map(Path, extra_members):
        if not path.exists():
            raise PipelineError(f"evaluate.extra_members: {path}: checkpoint not found")
    entries: dict[str, Entry] = {}
    runs: list[RunResult] = []
    wa_scores = []
    for label, run_dir, wa_path in zip(labels, map(Path, run_dirs), map(Path, wa_paths)):
        epochs = epoch_files(run_dir)
        named = {kind: run_dir / f"{kind}.pt" for kind in ("best", "last")}
        for path in named.values():
            if not path.is_file():
                raise PipelineError(f"{path}: checkpoint not found (the train stage writes it; rerun it)")
        wanted = {kind: _header_epoch(path) for kind, path in named.items()}
        found: dict[str, dict[str, np.ndarray]] = {}
        run_mean = _Mean()
        epoch_mAP: dict[str, dict[int, float]] = {s.name: {} for s in splits}
        n_params = seed = None
        for epoch, path in epochs.items():
            payload = load_checkpoint(path)
            seed = payload.get("seed", seed)
            scores, n_params = predictor(path, payload)
            del payload
            run_mean.add(scores)
            for split in splits:
                epoch_mAP[split.name][epoch] = _metrics(split, scores[split.name], classes)["mAP"]
            for kind, identity in wanted.items():
                if identity[0] == epoch and kind not in found:
                    found[kind] = scores
        for kind, path in named.items():
            if kind not in found:  # its epoch file is gone: run the file itself
                found[kind], _ = predictor(path)
            detail = {"epoch": wanted[kind][0]}
            if kind == "best" and params.data.validates_on_eval:
                detail["chosen_on_eval"] = True  # marked wherever it is reported: not a clean eval number
            entries[f"{label}/{kind}"] = Entry(f"{label}/{kind}", kind, 1, n_params, found[kind], detail)
        wa_payload = load_checkpoint(wa_path)
        if not wa_payload.get("averaged_epochs"):
            raise PipelineError(f"{wa_path}: not a weight-averaged checkpoint (run the average stage on {run_dir})")
        scores, wa_params = predictor(wa_path, wa_payload)
        averaged = [e for e in wa_payload["averaged_epochs"]]
        entries[f"{label}/wa"] = Entry(
            f"{label}/wa",
            "wa",
            1,
            wa_params,
            scores,
            {
                "averaged_epochs": len(averaged),
                "epochs": f"{min(averaged)}-{max(averaged)}" if averaged else "",
                "bn_reestimated_batches": wa_payload.get("bn_reestimated_batches", 0),
            },
        )
        wa_scores.append((wa_path, scores, wa_params))
        entries[f"{label}/checkpoint-ensemble"] = Entry(
            f"{label}/checkpoint-ensemble",
            "checkpoint-ensemble",
            run_mean.count,
            n_params * run_mean.count,
            run_mean.mean(),
            {"epochs": f"{min(epochs)}-{max(epochs)}"},
        )
        runs.append(RunResult(label, run_dir, seed, list(epochs), epoch_mAP))

    entries[SEED_ENSEMBLE] = Entry(
        SEED_ENSEMBLE,
        SEED_ENSEMBLE,
        len(wa_scores),
        sum(p for _, _, p in wa_scores),
        ensemble([s for _, s, _ in wa_scores]),
    )
    extras = [Path(p) for p in extra_members]
    if extras:
        members = list(wa_scores)
        used = {p.resolve(): p for p, _, _ in wa_scores}
        for path in extras:
            if path.is_dir():
                raise PipelineError(
                    f"evaluate.extra_members: {path} is a folder; name a checkpoint file (e.g. {path / 'wa.pt'})"
                )
            if path.resolve() in used:
                raise PipelineError(
                    f"evaluate.extra_members: {path} is already a member ({used[path.resolve()]}); "
                    "each model counts once"
                )
            used[path.resolve()] = path
            try:
                scores, n = predictor(path)
            except PipelineError as err:
                raise PipelineError(f"evaluate.extra_members: {err}") from None
            members.append((path, scores, n))
        entries[EXTRA_ENSEMBLE] = Entry(
            EXTRA_ENSEMBLE,
            EXTRA_ENSEMBLE,
            len(members),
            sum(p for _, _, p in members),
            ensemble([s for _, s, _ in members]),
            {"extra_members": [str(p) for p in extras]},
        )
    for entry in entries.values():
        for split in splits:
            entry.metrics[split.name] = _metrics(split, entry.scores[split.name], classes)
    return Evaluation(splits, classes, entries, runs, [str(p) for p in extras], len(predictor.calls))


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


def summary_table(result: Evaluation, split: Split) -> str:
    """The paper's table: model, members, parameters, mAP, AUC, d-prime."""
    first = next(iter(result.entries.values())).metrics[split.name]
    shown = {}
    for name, entry in result.entries.items():
        if entry.detail.get("chosen_on_eval"):
            shown[name] = f"{name} (epoch {entry.detail['epoch']}, chosen on eval*)"
        elif "epoch" in entry.detail:
            shown[name] = f"{name} (epoch {entry.detail['epoch']})"
        elif entry.kind in ("wa", "checkpoint-ensemble"):
            shown[name] = f"{name} (epochs {entry.detail['epochs']})"
        else:
            shown[name] = name
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
    predictions_dir = Path(predictions_dir) if predictions_dir else out_dir / "predictions"
    predictions: dict[str, dict[str, Path]] = {}
    for split in result.splits:
        predictions[split.name] = {}
        for name, entry in result.entries.items():
            path = predictions_dir / split.name / f"{name}.npz"
            write_predictions(path, entry.scores[split.name], split.clip_ids, result.classes.mids)
            predictions[split.name][name] = path
    metrics = out_dir / "eval.json"
    atomic_write_json(metrics, metrics_document(result))
    per_class = {}
    for split in result.splits:
        per_class[split.name] = out_dir / f"per_class_ap_{split.name}.csv"
        atomic_write_text(per_class[split.name], per_class_csv(result, split))
    summary = out_dir / "summary.txt"
    atomic_write_text(summary, "\n\n".join(summary_table(result, s) for s in result.splits) + "\n")
    written = []
    headline = EXTRA_ENSEMBLE if EXTRA_ENSEMBLE in result.entries else SEED_ENSEMBLE
    for split in result.splits:
        folder = plots_dir / split.name
        entry = result.entries[headline]
        written += plots.per_class_ap(
            folder / "per_class_ap",
            split.labels,
            entry.metrics[split.name],
            result.classes,
            f"{headline}, {split.name}",
        )
        written += plots.pr_curves(
            folder / "pr_curves",
            split.labels,
            entry.scores[split.name],
            entry.metrics[split.name],
            result.classes,
            f"{headline}, {split.name}",
        )
        levels = {
            name: e.metrics[split.name]["mAP"]
            for name, e in result.entries.items()
            if e.kind in ("wa", "checkpoint-ensemble", SEED_ENSEMBLE, EXTRA_ENSEMBLE)
        }
        written += plots.map_per_epoch(
            folder / "map_per_epoch",
            {r.label: r.epoch_mAP[split.name] for r in result.runs},
            levels,
            f"mAP per epoch, {split.name}",
        )
    return Outputs(metrics, per_class, summary, predictions, written)


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
    tags = {"runs": ",".join(r.label for r in result.runs), "seeds": ",".join(str(r.seed) for r in result.runs)}
    for r in result.runs:
        if r.seed in train_runs:
            tags[f"train_run.{r.label}"] = train_runs[r.seed]
    if train_runs:
        tags["summarises"] = ",".join(train_runs[r.seed] for r in result.runs if r.seed in train_runs)
    run.set_tags(tags)
    metrics, notes = {}, {}
    for split in result.splits:
        for name, entry in result.entries.items():
            m = entry.metrics[split.name]
            for key in ("mAP", "mAUC", "d_prime"):
                # a null value is not logged; Run.log_metrics tags the run with its note instead
                metrics[f"{split.name}/{name}/{key}"] = m[key]
                if m.get(f"{key}_note"):
                    notes[f"{split.name}/{name}/{key}"] = m[f"{key}_note"]
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
    run.log_metrics(metrics, notes=notes)
    run.log_params({"extra_members": ",".join(result.extra_members) or "none"})
    run.log_artifact(outputs.metrics)
    run.log_artifact(outputs.summary)
    for path in outputs.per_class.values():
        run.log_artifact(path)
    for path in outputs.plots:
        run.log_artifact(path, f"plots/{path.parent.name}")
    return train_runs

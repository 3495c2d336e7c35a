"""The paper's ablation, on any params file: the full recipe, then one variant per technique switched
off, each a DVC experiment (`dvc exp run --queue`, run by `dvc queue start`), with every seed of
`train.seeds`. Unchanged stages (prepare, features, the teacher where the labels stay enhanced, ...)
come from DVC's run cache, so a variant costs only what it changes.

    python -m pipeline.dag.ablation [--variants no_mixup no_specaugment] [--jobs 1] [--out-dir reports]

Each variant's eval mAP is its weight-averaged models' mAP on the eval split, mean and spread over the
seeds; weight averaging and the seed ensemble are read off the full recipe's evaluation (its best
checkpoints vs its WA models, its WA models vs their ensemble). Writes `ablation.csv`, `ablation.md` and
`ablation.png` and logs one MLflow parent run with a child run per variant.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path, atomic_write_json, atomic_write_text
from pipeline.core.metric_values import is_finite, value_text
from pipeline.core.mlflow_store import tracking_uri
from pipeline.core.params import Params
from pipeline.core.report import timing_path
from pipeline.core.tracking import stage_run
from pipeline.data.params import load_from_args

SPLIT = "eval"


@dataclass(frozen=True)
class Technique:
    label: str
    switch_off: Callable[[Params], list[str]]  # `-S` overrides; [] when the recipe already has it off


def _no_pretraining(p: Params) -> list[str]:
    return ["model.pretrained=none"] if p.model.pretrained.lower() != "none" else []


def _no_balanced(p: Params) -> list[str]:
    return ["sampling.balanced=false"] if p.sampling.balanced else []


def _no_specaugment(p: Params) -> list[str]:
    return ["augment.freqm=0", "augment.timem=0"] if (p.augment.freqm or p.augment.timem) else []


def _no_mixup(p: Params) -> list[str]:
    return ["augment.mixup=0.0"] if p.augment.mixup > 0 else []


def _no_enhancement(p: Params) -> list[str]:
    return ["labels.enhance=none"] if p.labels.enhance != "none" else []


TECHNIQUES = {
    "no_pretraining": Technique("ImageNet pretraining", _no_pretraining),
    "no_balanced_sampling": Technique("balanced sampling", _no_balanced),
    "no_specaugment": Technique("SpecAugment", _no_specaugment),
    "no_mixup": Technique("mixup", _no_mixup),
    "no_label_enhancement": Technique("label enhancement", _no_enhancement),
}
FULL = "full"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,60}")


@dataclass
class Row:
    variant: str
    technique: str
    overrides: list[str]
    per_seed: dict[int, float] = field(default_factory=dict)
    note: str = ""
    undefined: dict[int, str] = field(default_factory=dict)  # seed -> why its mAP is not a number

    @property
    def reason(self) -> str:
        """Why seeds are missing from the mean: `seed 2: n/a (no class has a positive clip)`."""
        return "; ".join(f"seed {s}: {value_text(None, note=why)}" for s, why in self.undefined.items())

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.per_seed.values()) if self.per_seed else None

    @property
    def spread(self) -> float | None:
        return statistics.stdev(self.per_seed.values()) if len(self.per_seed) > 1 else None


# ----------------------------------------------------------------------------------------------
# DVC experiments


def _dvc(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise PipelineError(f"dvc {' '.join(args[:3])} failed in {cwd}: {tail}")
    return proc.stdout


def queue_experiments(project: Path, prefix: str, variants: dict[str, list[str]]) -> dict[str, str]:
    """One queued DVC experiment per variant; returns variant -> experiment name."""
    names = {}
    for variant, overrides in variants.items():
        name = f"{prefix}-{variant}".replace("_", "-")
        args = ["exp", "run", "--queue", "--name", name]
        for override in overrides:
            args += ["-S", override]
        _dvc(args, project)
        names[variant] = name
    return names


def _queue_states(project: Path) -> dict[str, str]:
    """Experiment name -> Queued | Running | Success | Failed (from `dvc queue status`)."""
    states = {}
    for line in _dvc(["queue", "status"], project).splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[-1] in ("Queued", "Running", "Success", "Failed"):
            states[parts[1]] = parts[-1]
    return states


def run_queue(
    project: Path, names: list[str], jobs: int, env: dict[str, str], poll_s: float = 5.0, progress: bool = True
) -> None:
    """Start DVC's queue workers and wait until every named experiment has finished."""
    # The workers outlive `dvc queue start`: no pipes to them, or this call would wait for them to exit.
    started = subprocess.run(
        ["dvc", "queue", "start", "--jobs", str(jobs)],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if started.returncode != 0:
        raise PipelineError(f"dvc queue start failed in {project} (exit {started.returncode}); try: dvc queue start")
    start, reported = time.monotonic(), None
    while True:
        states = _queue_states(project)
        mine = {n: states.get(n, "Queued") for n in names}
        done = [n for n, s in mine.items() if s in ("Success", "Failed")]
        if progress and len(done) != reported:
            print(f"ablation: {len(done)}/{len(names)} experiments done ({time.monotonic() - start:.0f} s)", flush=True)
            reported = len(done)
        if len(done) == len(names):
            break
        time.sleep(poll_s)
    _dvc(["queue", "stop"], project)
    failed = [n for n, s in mine.items() if s == "Failed"]
    if failed:
        raise PipelineError(f"experiment {failed[0]} failed (of {len(failed)}); see: dvc queue logs {failed[0]}")


def _flatten_exp_show(rows: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json`'s tree -> experiment name -> its metrics files' data."""
    found = {}

    def visit(node):
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        name = node.get("name")
        data = node.get("data") or {}
        if name and isinstance(data, dict) and "metrics" in data:
            found[name] = {path: (entry or {}).get("data", {}) for path, entry in (data.get("metrics") or {}).items()}
        for key in ("experiments", "revs"):
            visit(node.get(key))

    visit(rows)
    return found


def experiment_metrics(
    project: Path, names: dict[str, str], metrics_file: str = "metrics/eval.json"
) -> dict[str, dict]:
    """variant -> the evaluation JSON of its experiment."""
    shown = _flatten_exp_show(json.loads(_dvc(["exp", "show", "--json", "--no-pager"], project) or "[]"))
    out = {}
    for variant, name in names.items():
        data = shown.get(name, {}).get(metrics_file)
        if not data:
            raise PipelineError(f"experiment {name} has no {metrics_file}; see: dvc exp show, dvc queue logs {name}")
        out[variant] = data
    return out


# ----------------------------------------------------------------------------------------------
# the table


def _split_of(evaluation: dict, split: str) -> dict:
    """eval.json holds the first evaluate split at the top level and others under their name."""
    return evaluation.get(split, evaluation) if isinstance(evaluation.get(split), dict) else evaluation


def per_seed(evaluation: dict, seeds: list[int], model: str = "wa") -> dict[int, float]:
    """Seed -> mAP of each seed's `model`, for the seeds whose mAP is a finite number (see `undefined`)."""
    entries = _split_of(evaluation, SPLIT)
    missing = [s for s in seeds if f"seed-{s}/{model}" not in entries]
    if missing:
        raise PipelineError(
            f"the evaluation has no seed-{missing[0]}/{model} entry (is seed {missing[0]} in train.seeds?)"
        )
    return {s: float(v) for s in seeds if is_finite(v := entries[f"seed-{s}/{model}"].get("mAP"))}


def undefined(evaluation: dict, seeds: list[int], model: str = "wa") -> dict[int, str]:
    """Seed -> why its `model`'s mAP is null in eval.json (its `mAP_note`), for the seeds `per_seed` leaves out."""
    entries = _split_of(evaluation, SPLIT)
    return {s: _why(e) for s in seeds if not is_finite((e := entries.get(f"seed-{s}/{model}", {})).get("mAP"))}


def _why(entry: dict) -> str:
    """An eval.json entry's reason for a null mAP, short: `no class has a positive clip`."""
    return (entry.get("mAP_note") or "mAP undefined").removeprefix("undefined (").removesuffix(")")


def _row(variant: str, technique: str, overrides: list[str], evaluation: dict, seeds, model="wa", note="") -> Row:
    return Row(
        variant,
        technique,
        overrides,
        per_seed(evaluation, seeds, model),
        note=note,
        undefined=undefined(evaluation, seeds, model),
    )


def build_rows(params: Params, overrides: dict[str, list[str]], evaluations: dict[str, dict]) -> list[Row]:
    seeds = list(params.train.seeds)
    full = evaluations[FULL]
    rows = [_row(FULL, "full recipe (weight-averaged models)", [], full, seeds)]
    for variant, technique in TECHNIQUES.items():
        if variant not in overrides:
            continue
        if not overrides[variant]:
            rows.append(Row(variant, f"- {technique.label}", [], {}, note="already off in this recipe"))
            continue
        rows.append(_row(variant, f"- {technique.label}", overrides[variant], evaluations[variant], seeds))
    rows.append(
        _row(
            "no_weight_averaging",
            "- weight averaging (best checkpoints)",
            [],
            full,
            seeds,
            "best",
            note="read off the full recipe",
        )
    )
    ensemble = _split_of(full, SPLIT).get("seed-ensemble")
    if ensemble and len(seeds) > 1:
        value = ensemble.get("mAP")
        rows.append(
            Row(
                "seed_ensemble",
                f"+ ensemble of the {len(seeds)} seeds",
                [],
                {0: float(value)} if is_finite(value) else {},
                note="read off the full recipe; one value, no spread",
                undefined={} if is_finite(value) else {0: _why(ensemble)},
            )
        )
    return rows


def _fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    return "" if value is None else (f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}")


def write_reports(rows: list[Row], out_dir: Path, command: str, seconds: float) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = rows[0].mean
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["variant", "technique", "mAP_mean", "mAP_std", "delta", "seeds", "per_seed", "overrides", "note"])
    md = ["| technique | eval mAP (mean ± sd over seeds) | Δ vs full | seeds |", "|---|---|---|---|"]
    for row in rows:
        delta = None if row.mean is None or base is None or row is rows[0] else row.mean - base
        # a seed whose mAP is null in eval.json shows as n/a here and is said why in the note
        per = " ".join(
            f"{s}:{row.per_seed[s]:.4f}" if s in row.per_seed else f"{s}:n/a"
            for s in sorted({*row.per_seed, *row.undefined})
        )
        writer.writerow(
            [
                row.variant,
                row.technique,
                _fmt(row.mean),
                _fmt(row.spread),
                _fmt(delta, sign=True),
                len(row.per_seed),
                per,
                " ".join(row.overrides),
                "; ".join(n for n in (row.note, row.reason) if n),
            ]
        )
        value = (
            (row.reason or row.note)
            if row.mean is None
            else (f"{row.mean:.4f}" + (f" ± {row.spread:.4f}" if row.spread is not None else ""))
        )
        notes = [row.note] if row.note and (row.mean is not None or row.reason) else []
        notes += [row.reason] if row.reason and row.mean is not None else []
        note = f" ({'; '.join(notes)})" if notes else ""
        md.append(f"| {row.technique}{note} | {value} | {_fmt(delta, sign=True)} | {len(row.per_seed) or ''} |")
    md += ["", f"Produced by `{command}`; mAP on the `{SPLIT}` split."]
    paths = {"csv": out_dir / "ablation.csv", "md": out_dir / "ablation.md", "png": out_dir / "ablation.png"}
    # the wall clock beside the committed reports, ignored by git: a rerun of the same results rewrites none of them
    atomic_write_json(
        timing_path(paths["md"], ".json"), {"seconds": round(seconds, 1), "minutes": round(seconds / 60, 1)}
    )
    atomic_write_text(paths["csv"], table.getvalue())
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    _bar_plot(rows, paths["png"])
    return paths


def _bar_plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.mean is not None]  # a row without an mAP has no bar (the table says why)
    base = rows[0].mean
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(shown) + 1.2))
    y = range(len(shown))
    colours = [
        "tab:blue" if r is rows[0] or base is None else ("tab:green" if r.mean >= base else "tab:red") for r in shown
    ]
    ax.barh(list(y), [r.mean for r in shown], xerr=[r.spread or 0.0 for r in shown], color=colours, capsize=3)
    ax.set_yticks(list(y), [r.technique for r in shown])
    ax.invert_yaxis()
    if base is not None:
        ax.axvline(base, color="k", lw=0.8, ls="--")
    if shown:
        low = min(r.mean - (r.spread or 0) for r in shown)
        ax.set_xlim(max(0.0, low - 0.05), min(1.0, max(r.mean + (r.spread or 0) for r in shown) + 0.02))
    ax.set_xlabel(f"{SPLIT} mAP (mean ± sd over seeds)")
    ax.set_title("Ablation: each technique switched off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def log_to_mlflow(params: Params, rows: list[Row], paths: dict[str, Path], names: dict[str, str]) -> None:
    """One parent run `ablation` with a child run per row (MLflow nests runs by mlflow.parentRunId)."""

    with stage_run(params, "ablation", name="ablation") as parent:
        # a row without an mAP is not logged; the run is tagged with why (Run.log_metrics)
        parent.log_metrics(
            {f"mAP_{r.variant}": r.mean for r in rows}, notes={f"mAP_{r.variant}": r.reason or r.note for r in rows}
        )
        for path in paths.values():
            parent.log_artifact(path)
        for row in rows:
            tags = {
                "variant": row.variant,
                "technique": row.technique,
                "dvc_experiment": names.get(row.variant),
                "overrides": " ".join(row.overrides) or None,
                "note": "; ".join(n for n in (row.note, row.reason) if n) or None,
                "mlflow.parentRunId": parent.run_id,
            }  # None (tracking off) is dropped by stage_run
            with stage_run(params, "ablation", tags=tags, name=f"ablation-{row.variant}") as child:
                if row.mean is not None:
                    child.log_metrics(
                        {
                            "mAP_mean": row.mean,
                            **({"mAP_std": row.spread} if row.spread is not None else {}),
                            **{f"mAP_seed_{s}": v for s, v in row.per_seed.items()},
                        }
                    )


def _worker_env(params: Params, project: Path) -> dict[str, str]:
    """The queue's environment: experiments run in temporary copies of the project, so a relative
    SQLite store would vanish with them; point them at the project's own store."""
    import os

    env = dict(os.environ)
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str((Path(project) / uri[len("sqlite:///") :]).resolve())
    env["MLFLOW_TRACKING_URI"] = uri
    return env


# ----------------------------------------------------------------------------------------------


def ablate(
    params: Params,
    project: Path,
    variants: list[str] | None = None,
    jobs: int = 1,
    out_dir: str | Path = "reports",
    prefix: str | None = None,
    command: str = "python -m pipeline.dag.ablation",
    common: list[str] | None = None,
    progress: bool = True,
) -> list[Row]:
    """`params`: params.yaml with the `common` overrides, which every experiment gets too (`-S`)."""
    if len(params.train.seeds) < 2:
        raise PipelineError(
            f"the ablation needs at least 2 seeds for a spread, train.seeds is {params.train.seeds}; "
            f"e.g. --set 'train.seeds=[1, 2]'"
        )
    if shutil.which("dvc") is None:
        raise PipelineError("dvc is not on PATH; run inside the project's environment (make ablation)")
    chosen = list(TECHNIQUES) if variants is None else variants
    unknown = [v for v in chosen if v not in TECHNIQUES]
    if unknown:
        raise PipelineError(f"unknown ablation variant '{unknown[0]}'; choose from {', '.join(TECHNIQUES)}")
    prefix = prefix or time.strftime("abl%m%d-%H%M%S")
    if not NAME.fullmatch(prefix):
        raise PipelineError(f"--prefix {prefix!r}: letters, digits, '-' and '_' only")
    overrides = {FULL: [], **{v: TECHNIQUES[v].switch_off(params) for v in chosen}}
    to_run = {v: [*(common or []), *o] for v, o in overrides.items() if v == FULL or o}
    started = time.monotonic()
    names = queue_experiments(project, prefix, to_run)
    run_queue(project, list(names.values()), jobs, _worker_env(params, project), progress=progress)
    rows = build_rows(params, overrides, experiment_metrics(project, names))
    paths = write_reports(rows, Path(project) / out_dir, command, time.monotonic() - started)
    log_to_mlflow(params, rows, paths, names)
    return rows


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = params_parser(
        "Run the PSLA ablation as DVC experiments and write reports/ablation.{csv,md,png}. "
        "--set overrides apply to every experiment (the full recipe included)."
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        choices=list(TECHNIQUES),
        help=f"techniques to switch off (default: all of {', '.join(TECHNIQUES)})",
    )
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at once by DVC's queue (default 1)")
    parser.add_argument("--out-dir", default="reports", help="where ablation.csv/.md/.png go (default: reports)")
    parser.add_argument("--prefix", help="experiment name prefix (default: abl<date>-<time>)")

    def body(args):
        if Path(args.params).resolve() != Path("params.yaml").resolve():
            raise PipelineError(
                f"--params {args.params}: the experiments run the DAG on params.yaml; write your "
                f"params there (python -m pipeline.stages.params --params {args.params} --out params.yaml) "
                f"or pass changes with --set"
            )
        params = load_from_args(args)
        command = "python -m pipeline.dag.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
        rows = ablate(
            params,
            Path.cwd(),
            args.variants,
            args.jobs,
            args.out_dir,
            args.prefix,
            command.strip(),
            common=args.overrides,
        )
        print(Path(args.out_dir, "ablation.md").read_text(), end="")
        assert rows

    run(body, parser, argv)


if __name__ == "__main__":
    main()

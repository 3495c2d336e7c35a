"""Evaluate the trained runs (best, last, WA models; checkpoint, seed, last ensembles) or checkpoints alone.

    python -m pipeline.stages.evaluate --runs models/seed-1 models/seed-2 \\
        --wa models/wa/seed-1.pt models/wa/seed-2.pt --features-dir data/features --classes data/classes.csv \\
        --out-dir metrics --plots-dir plots/evaluate --predictions-dir metrics/predictions

On each split of evaluate.splits (`<features-dir>/<split>.h5`). Writes `<out-dir>/eval.json` (DVC
metrics: one entry per model and ensemble with mAP, mAUC, d_prime, parameters, members; the first
split at the top level, the others under their name), `<out-dir>/per_class_ap_<split>.csv`,
`<out-dir>/summary.txt` (the headline, then the table, printed), `<out-dir>/thresholds.json` (per-class
decision thresholds of every model, chosen on val: pipeline/evaluation/thresholds.py), predictions
`<predictions-dir>/<split>/<model>.npz`, and plots
`<plots-dir>/<split>/{per_class_ap,pr_curves,map_per_epoch}.{csv,png}` (+ pr_curves_classes.csv).
`--wa` defaults to `<run>/wa.pt` for each run. evaluate.extra_members adds an ensemble of those
checkpoints with the runs' weight-averaged models.

Checkpoints alone, without training runs (e.g. the ten imported released models of the official
10-model ensemble): `--members CKPT [CKPT ...]` scores each (`member-<i>`) and the mean of their scores
(`members-ensemble`), with the same outputs but the per-epoch plot:

    python -m pipeline.stages.evaluate --members models/psla/as_mdl_0.pt models/psla/as_mdl_1.pt \\
        --features-dir data/features --classes data/classes.csv --out-dir metrics/released

MLflow: the features files evaluated are the run's dataset inputs; each weight-averaged model and the
seed ensemble are logged as MLflow Models and registered as `psla-<dataset>` (`pipeline/tagging/mlflow_model.py`);
the pipeline execution's parent run gets the headline eval mAPs (evaluate.headline) and ends
(`pipeline/core/pipeline_run.py`). With `--members` the command stands alone: its MLflow run registers
nothing and leaves any parent run as it is.
"""

from pathlib import Path

import torch

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.pipeline_run import finish_pipeline
from pipeline.core.tracking import stage_run
from pipeline.data.classes import read_classes
from pipeline.data.params import load_from_args
from pipeline.evaluation.evaluate import (
    Predictor,
    evaluate_members,
    evaluate_runs,
    headline_metrics,
    load_split,
    log_evaluation,
    summary_text,
    write_outputs,
)
from pipeline.evaluation.thresholds import write_threshold_file
from pipeline.tagging.mlflow_model import log_evaluated_models
from pipeline.training.device import resolve_device


def parser_():
    parser = params_parser(__doc__.splitlines()[0])
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument("--runs", nargs="+", help="run folders of the train stage, one per seed")
    inputs.add_argument(
        "--runs-pattern",
        metavar="PATTERN",
        help="the run folder of each of train.seeds, "
        "e.g. models/seed-{seed} (what a DAG uses: the seeds come from params)",
    )
    inputs.add_argument(
        "--members",
        nargs="+",
        metavar="CKPT",
        help="checkpoints to evaluate alone, without runs: each one and the mean of their scores",
    )
    parser.add_argument(
        "--wa", nargs="+", help="their weight-averaged checkpoints, in the same order (default: <run>/wa.pt)"
    )
    parser.add_argument("--wa-pattern", metavar="PATTERN", help="with --runs-pattern: e.g. models/wa/seed-{seed}.pt")
    parser.add_argument("--features-dir", required=True, help="folder of <split>.h5 features files")
    parser.add_argument("--classes", required=True, help="class list (index,mid,display_name)")
    parser.add_argument(
        "--out-dir", required=True, help="eval.json, per_class_ap_<split>.csv, summary.txt, thresholds.json"
    )
    parser.add_argument("--plots-dir", help="plots (PNG + CSV), per split (default: <out-dir>/plots)")
    parser.add_argument("--predictions-dir", help="predictions per split and model (default: <out-dir>/predictions)")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also log each registered model as ONNX (psla export --format onnx; 20-40 s per model on 2 cores)",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_paths(args, params) -> tuple[list[str], list[str]]:
    """The run folders and their weight-averaged checkpoints, from --runs/--wa or the patterns."""
    if args.runs_pattern:
        args.runs = [args.runs_pattern.format(seed=seed) for seed in params.train.seeds]
        if args.wa_pattern:
            args.wa = [args.wa_pattern.format(seed=seed) for seed in params.train.seeds]
    wa = args.wa or [str(Path(r) / "wa.pt") for r in args.runs]
    if len(wa) != len(args.runs):
        raise PipelineError(f"{len(wa)} --wa checkpoints for {len(args.runs)} --runs; pass one per run, in order")
    return args.runs, wa


def check_mode(args) -> None:
    """Runs or members, and only the options of the one given (one-line errors)."""
    if not (args.runs or args.runs_pattern or args.members):
        raise PipelineError("nothing to evaluate: pass --runs (or --runs-pattern), or --members CKPT [CKPT ...]")
    if args.members and (args.wa or args.wa_pattern):
        raise PipelineError("--wa and --wa-pattern name the runs' WA models; --members evaluates checkpoints alone")


def main(argv=None):
    parser = parser_()

    def body(args):
        check_mode(args)
        params = load_from_args(args)
        classes = read_classes(args.classes)
        splits = [
            load_split(name, Path(args.features_dir) / f"{name}.h5", classes, args.classes)
            for name in params.evaluate.splits
        ]
        if not splits:
            raise PipelineError("evaluate.splits is empty: name the splits to evaluate (e.g. [eval, val])")
        device = resolve_device(params.train.device)
        predictor = Predictor(params, splits, classes, device, progress=not args.no_progress)
        if args.members:
            evaluate_alone(args, params, splits, classes, predictor)
        else:
            evaluate_pipeline(args, params, splits, classes, predictor)

    run(body, parser, argv)


def evaluate_pipeline(args, params, splits, classes, predictor) -> None:
    """The DAG's stage: the runs, their models registered, the pipeline's parent run ended with the headline."""
    runs, wa = run_paths(args, params)
    with stage_run(params, "evaluate", {"runs": ",".join(Path(r).name for r in runs)}) as run_:
        with torch.no_grad():
            result = evaluate_runs(params, runs, wa, splits, classes, predictor, params.evaluate.extra_members)
        outputs, summarised = write_and_log(run_, result, args, params)
        thresholds = Path(args.out_dir) / "thresholds.json"
        thresholds = thresholds if thresholds.is_file() else None
        versions = log_evaluated_models(run_, params, result, wa, thresholds, args.onnx)
    finish_pipeline(run_, *headline_metrics(result))  # the last stage: the pipeline's parent run ends
    print(summary_text(result))
    linked = f"; tagged with train runs {', '.join(summarised.values())}" if summarised else ""
    print(f"{result.checkpoint_runs} checkpoint runs -> {outputs.metrics}{linked}")
    if versions:
        registered = ", ".join(f"{name} v{v}" for name, v in versions.items())
        print(f"registered as psla-{params.data.dataset}: {registered}")


def evaluate_alone(args, params, splits, classes, predictor) -> None:
    """--members: the checkpoints and their ensemble, standalone: no model registered, no parent run ended."""
    if params.evaluate.extra_members:
        print("note: evaluate.extra_members does not apply to --members (list every checkpoint there)")
    with stage_run(params, "evaluate", {"role": "members"}) as run_:
        with torch.no_grad():
            result = evaluate_members(args.members, splits, classes, predictor)
        outputs, _ = write_and_log(run_, result, args, params)
    print(summary_text(result))
    print(f"{result.checkpoint_runs} checkpoint runs -> {outputs.metrics}")


def write_and_log(run_, result, args, params):
    """Both modes' outputs and their MLflow record: the files, the metrics and plots, the thresholds (chosen on
    val, marked when val lists the eval clips), the features scored as dataset inputs. Returns the outputs and
    the train runs the metrics were linked to."""
    outputs = write_outputs(result, args.out_dir, args.plots_dir, args.predictions_dir)
    thresholds = write_threshold_file(result, args.out_dir, params.data.validates_on_eval)
    summarised = log_evaluation(run_, result, outputs)
    if thresholds is not None:
        run_.log_artifact(thresholds)
    else:
        print("no thresholds: neither val nor (with val on eval) eval was evaluated (evaluate.splits)")
    for split in result.splits:
        run_.log_dataset(split.features, split.name, clips=len(split.clip_ids))
    return outputs, summarised


if __name__ == "__main__":
    main()

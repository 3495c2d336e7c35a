"""Evaluate the trained runs: best, last and weight-averaged models, checkpoint and seed ensembles.

    python -m pipeline.stages.evaluate --runs models/seed-1 models/seed-2 \\
        --wa models/wa/seed-1.pt models/wa/seed-2.pt --features-dir data/features --classes data/classes.csv \\
        --out-dir metrics --plots-dir plots/evaluate --predictions-dir metrics/predictions

On each split of evaluate.splits (`<features-dir>/<split>.h5`). Writes `<out-dir>/eval.json` (DVC
metrics: one entry per model and ensemble with mAP, mAUC, d_prime, parameters, members; the first
split at the top level, the others under their name), `<out-dir>/per_class_ap_<split>.csv`,
`<out-dir>/summary.txt` (the table printed), predictions `<predictions-dir>/<split>/<model>.npz`,
and plots `<plots-dir>/<split>/{per_class_ap,pr_curves,map_per_epoch}.{csv,png}` (+ pr_curves_classes.csv).
`--wa` defaults to `<run>/wa.pt` for each run. evaluate.extra_members adds an ensemble of those
checkpoints with the runs' weight-averaged models.

MLflow: the features files evaluated are the run's dataset inputs; each weight-averaged model and the
seed ensemble are logged as MLflow Models and registered as `psla-<dataset>` (`pipeline/tagging/mlflow_model.py`);
the pipeline execution's parent run gets the headline eval mAPs and ends (`pipeline/core/pipeline_run.py`).
"""

from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.pipeline_run import finish_pipeline, headline_metrics
from pipeline.core.tracking import stage_run
from pipeline.data.classes import read_classes
from pipeline.data.params import load_from_args
from pipeline.evaluation.evaluate import (
    Predictor,
    evaluate_runs,
    load_split,
    log_evaluation,
    summary_table,
    write_outputs,
)
from pipeline.tagging.mlflow_model import log_evaluated_models
from pipeline.training.device import resolve_device


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--runs", nargs="+", help="run folders of the train stage, one per seed")
    runs.add_argument(
        "--runs-pattern",
        metavar="PATTERN",
        help="the run folder of each of train.seeds, "
        "e.g. models/seed-{seed} (what a DAG uses: the seeds come from params)",
    )
    parser.add_argument(
        "--wa", nargs="+", help="their weight-averaged checkpoints, in the same order (default: <run>/wa.pt)"
    )
    parser.add_argument("--wa-pattern", metavar="PATTERN", help="with --runs-pattern: e.g. models/wa/seed-{seed}.pt")
    parser.add_argument("--features-dir", required=True, help="folder of <split>.h5 features files")
    parser.add_argument("--classes", required=True, help="class list (index,mid,display_name)")
    parser.add_argument("--out-dir", required=True, help="eval.json, per_class_ap_<split>.csv, summary.txt")
    parser.add_argument("--plots-dir", help="plots (PNG + CSV), per split (default: <out-dir>/plots)")
    parser.add_argument("--predictions-dir", help="predictions per split and model (default: <out-dir>/predictions)")
    parser.add_argument("--no-progress", action="store_true")

    def body(args):
        import torch

        params = load_from_args(args)
        classes = read_classes(args.classes)
        if args.runs_pattern:
            args.runs = [args.runs_pattern.format(seed=seed) for seed in params.train.seeds]
            if args.wa_pattern:
                args.wa = [args.wa_pattern.format(seed=seed) for seed in params.train.seeds]
        wa = args.wa or [str(Path(r) / "wa.pt") for r in args.runs]
        if len(wa) != len(args.runs):
            raise PipelineError(f"{len(wa)} --wa checkpoints for {len(args.runs)} --runs; pass one per run, in order")
        splits = [
            load_split(name, Path(args.features_dir) / f"{name}.h5", classes, args.classes)
            for name in params.evaluate.splits
        ]
        if not splits:
            raise PipelineError("evaluate.splits is empty: name the splits to evaluate (e.g. [eval, val])")
        device = resolve_device(params.train.device)
        predictor = Predictor(params, splits, classes, device, progress=not args.no_progress)
        with stage_run(params, "evaluate", {"runs": ",".join(Path(r).name for r in args.runs)}) as run_:
            with torch.no_grad():
                result = evaluate_runs(params, args.runs, wa, splits, classes, predictor, params.evaluate.extra_members)
            outputs = write_outputs(result, args.out_dir, args.plots_dir, args.predictions_dir)
            summarised = log_evaluation(run_, result, outputs)
            for split in splits:
                run_.log_dataset(split.features, split.name, clips=len(split.clip_ids))
            versions = log_evaluated_models(run_, params, result, wa)
        finish_pipeline(run_, *headline_metrics(result))  # the last stage: the pipeline's parent run ends
        print("\n\n".join(summary_table(result, s) for s in splits))
        linked = f"; tagged with train runs {', '.join(summarised.values())}" if summarised else ""
        print(f"{result.checkpoint_runs} checkpoint runs -> {outputs.metrics}{linked}")
        if versions:
            registered = ", ".join(f"{name} v{v}" for name, v in versions.items())
            print(f"registered as psla-{params.data.dataset}: {registered}")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

"""Score a predictions file against a manifest's labels: mAP, mean AUC, d-prime, per-class AP.

    python -m pipeline.stages.score --scores preds.npz --manifest data/eval.csv --classes data/classes.csv \\
        --out metrics/score.json [--per-class-csv metrics/score_per_class.csv]

`--scores` is our predictions file (.npz or .h5, matched to the manifest by clip id) or a plain CSV
matrix in manifest order (one row per clip, one score per class, no header: the format of the
paper's published predictions). No model runs. mAP and mAUC are macro means over the classes
with at least one positive clip; d-prime is that of mAUC; the classes left out are listed.
A value that is undefined or infinite (d-prime of a perfect ranking) is null in the JSON with
`<key>_note` beside it saying which, an empty per-class cell, and a tag in MLflow
(docs/recipe.md, "Metrics").
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_write_json, atomic_write_text
from pipeline.core.metric_values import json_ready, value_text
from pipeline.core.metrics import evaluate
from pipeline.core.predictions import load_scores_for
from pipeline.core.tracking import stage_run
from pipeline.data.params import load_from_args
from pipeline.labels.weights import read_labelled_manifest

PER_CLASS_COLUMNS = ("index", "mid", "display_name", "AP", "AUC", "positives")


def _cell(value) -> str:
    return "" if value is None else repr(float(value))


def per_class_csv(result: dict, classes) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_CLASS_COLUMNS)
    for i, (mid, name) in enumerate(zip(classes.mids, classes.names)):
        writer.writerow(
            [
                i,
                mid,
                name,
                _cell(result["per_class_AP"][mid]),
                _cell(result["per_class_AUC"][mid]),
                result["per_class_positives"][mid],
            ]
        )
    return buffer.getvalue()


def summary_line(result: dict) -> str:
    def fmt(key, spec):  # inf, or n/a with the reason (n/a (no positives)) where the value is null
        note = result.get(f"{key}_note") or ""
        if result[key] is None and note.split(" ")[0] in ("inf", "-inf"):
            return note.split(" ")[0]
        return value_text(result[key], spec, note.replace("undefined (", "").rstrip(")") or None)

    return (
        f"mAP {fmt('mAP', '.4f')}  mAUC {fmt('mAUC', '.4f')}  d' {fmt('d_prime', '.3f')}  "
        f"({result['n_clips']} clips, {result['n_scored_classes']} classes scored, "
        f"{len(result['classes_without_positives'])} without positives)"
    )


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--scores",
        required=True,
        help="predictions (.npz/.h5 with scores, clip_ids, class_ids) or a headerless CSV matrix in manifest order",
    )
    parser.add_argument(
        "--manifest", required=True, help="manifest CSV (clip_id,[audio,]labels); labels are class MIDs"
    )
    parser.add_argument("--classes", required=True, help="class list (index,mid,display_name)")
    parser.add_argument("--out", required=True, help="output metrics JSON")
    parser.add_argument("--per-class-csv", help="also write index,mid,display_name,AP,AUC,positives here")

    def body(args):
        params = load_from_args(args)
        entries, classes, labels = read_labelled_manifest(args.manifest, args.classes, "score")
        scores = load_scores_for(args.scores, entries, classes)
        result = evaluate(labels, scores, classes.mids)
        if result["n_scored_classes"] == 0:
            raise PipelineError(f"{args.manifest}: no class has a positive clip; AP is undefined for every class")
        payload = {
            **result,
            "inputs": {"scores": str(args.scores), "manifest": str(args.manifest), "classes": str(args.classes)},
        }
        atomic_write_json(args.out, json_ready(payload))  # null, never a bare NaN / Infinity
        if args.per_class_csv:
            atomic_write_text(args.per_class_csv, per_class_csv(result, classes))

        with stage_run(
            params, "score", {"manifest": Path(args.manifest).stem, "scores": Path(args.scores).name}
        ) as run_:
            run_.log_metrics(  # a null value is not logged: the run gets a tag with its note instead
                {k: result[k] for k in ("mAP", "mAUC", "d_prime")}
                | {"n_clips": result["n_clips"], "n_scored_classes": result["n_scored_classes"]},
                notes={k: result[f"{k}_note"] for k in ("mAP", "mAUC", "d_prime") if f"{k}_note" in result},
            )
        print(summary_line(result))

    run(body, parser, argv)


if __name__ == "__main__":
    main()

"""Enhance a training manifest's labels with the ontology and a teacher's scores (PSLA's "L").

    python -m pipeline.stages.enhance --manifest data/train.csv --classes data/classes.csv \
        --ontology data/ontology.json --scores teacher/train_predictions.npz --out data/train_enhanced.csv \
        [--report reports/enhance.json]

`labels.enhance` (none | mean | median | 25 | 10 | 5) picks the per-class threshold statistic,
`labels.types` (type1 and/or type2) the kinds of additions. `--scores` is a predictions file
(.npz/.h5, matched by clip id) or a headerless CSV matrix in manifest order (the paper's
published teacher predictions). The output manifest has the input's columns in the input's
order, labels in class order; with `labels.enhance: none` it is the input, unchanged, and
neither `--scores` nor `--ontology` is needed.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path, atomic_write_json, atomic_write_text
from pipeline.core.predictions import load_scores_for
from pipeline.core.tracking import stage_run
from pipeline.data.classes import read_ontology
from pipeline.data.params import load_from_args
from pipeline.data.registry import selected
from pipeline.labels.enhance import build_relations, enhance_labels, labels_of, restricted_classes
from pipeline.labels.plan import label_plan
from pipeline.labels.weights import read_labelled_manifest


def rewrite_labels(source: Path, out: Path, labels: list[tuple[str, ...]]) -> None:
    """Write `source`'s manifest to `out` with its labels column replaced, every other column kept."""
    with open(source, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        col = header.index("labels")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for row, new in zip(reader, labels, strict=True):
            row[col] = ",".join(new)
            writer.writerow(row)
    atomic_write_text(out, buffer.getvalue())


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest", required=True, help="training manifest (clip_id,[audio,]labels); labels are class MIDs"
    )
    parser.add_argument("--classes", required=True, help="class list (index,mid,display_name)")
    parser.add_argument("--ontology", help="ontology (AudioSet ontology.json format); not needed for enhance none")
    parser.add_argument(
        "--scores",
        help="teacher scores on the manifest's clips: predictions file (.npz/.h5) or "
        "CSV matrix in manifest order; not needed for enhance none",
    )
    parser.add_argument("--out", required=True, help="output: the enhanced manifest")
    parser.add_argument("--report", help="output: JSON report (default: <out without suffix>_report.json)")

    def body(args):
        params = load_from_args(args)
        stat, types = params.labels.enhance, tuple(params.labels.types)
        out, source = Path(args.out), Path(args.manifest)
        report_path = Path(args.report) if args.report else out.with_name(out.stem + "_report.json")
        entries, classes, labels = read_labelled_manifest(source, args.classes, "enhance")
        skipped_sources: list[str] = []
        if not label_plan(params).enhance:
            result = enhance_labels(labels, None, None, "none")
            with atomic_path(out) as tmp:
                shutil.copyfile(source, tmp)
        else:
            if not args.ontology:
                raise PipelineError(
                    f"labels.enhance is {stat}: pass --ontology (AudioSet ontology.json format), "
                    f"or set labels.enhance: none"
                )
            if not args.scores:
                raise PipelineError(
                    f"labels.enhance is {stat}: pass --scores (the teacher's predictions on "
                    f"{source.name}), or set labels.enhance: none"
                )
            # FSD50K, as the official code: classes restricted in the ontology enhance nothing
            ontology = read_ontology(args.ontology)
            restricted_enhance = getattr(selected(params), "RESTRICTED_CLASSES_ENHANCE", True)
            relations = build_relations(ontology, classes, source=args.ontology, restricted_sources=restricted_enhance)
            skipped_sources = [] if restricted_enhance else restricted_classes(ontology, classes.mids)
            scores = load_scores_for(args.scores, entries, classes)
            result = enhance_labels(labels, scores, relations, stat, types)
            rewrite_labels(source, out, labels_of(result.labels, classes.mids))
        report = {
            "manifest": str(source),
            "scores": args.scores,
            "ontology": args.ontology,
            "out": str(out),
            "skipped_sources": skipped_sources,
            **result.report(classes.mids, classes.names),
        }
        atomic_write_json(report_path, report)
        metrics = {k: float(v) for k, v in result.metrics().items()}
        with stage_run(
            params,
            "enhance",
            {"manifest": source.stem, "enhance": stat, "types": "+".join(types) if stat != "none" else None},
        ) as run_:
            run_.log_metrics(metrics)
            run_.log_artifact(report_path)
        kinds = ", ".join(f"{t} {n}" for t, n in result.added_by_type.items())
        how = f"enhance {stat}, {'+'.join(result.types)}" if stat != "none" else "enhance none: passed through"
        print(
            f"{len(entries)} clips ({how}): labels {result.labels_before} -> {result.labels_after} "
            f"(+{result.added}{': ' + kinds if kinds else ''}; {result.clips_changed} clips changed) -> {out}"
        )

    run(body, parser, argv)


if __name__ == "__main__":
    main()

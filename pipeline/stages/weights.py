"""Compute the paper's balanced-sampling weights of a manifest's clips.

    python -m pipeline.stages.weights --manifest data/train.csv --classes data/classes.csv --out data/weights.csv

weight of a clip = sum over its labels of 1000 / (count(label) + 0.01), counts over the whole
manifest; written as `clip_id,weight` in manifest order. The manifest may lack the audio column.
"""

from pathlib import Path

import numpy as np

from pipeline.core.cli import params_parser, run
from pipeline.core.tracking import stage_run
from pipeline.data.params import load_from_args
from pipeline.labels.weights import read_labelled_manifest, sample_weights, write_weights


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest", required=True, help="manifest CSV (clip_id,[audio,]labels); labels are class MIDs"
    )
    parser.add_argument("--classes", required=True, help="class list (index,mid,display_name)")
    parser.add_argument("--out", required=True, help="output weights CSV (clip_id,weight)")

    def body(args):
        params = load_from_args(args)
        entries, classes, labels = read_labelled_manifest(args.manifest, args.classes, "weight")
        weights = sample_weights(labels)
        write_weights(args.out, [e.clip_id for e in entries], weights)
        counts = labels.sum(axis=0, dtype=np.int64)
        metrics = {
            "clips": len(entries),
            "classes": len(classes),
            "classes_without_clips": int((counts == 0).sum()),
            "clips_without_labels": int((labels.sum(axis=1, dtype=np.int64) == 0).sum()),
            "weight_min": float(weights.min()),
            "weight_max": float(weights.max()),
            "weight_median": float(np.median(weights)),
        }
        with stage_run(params, "weights", {"manifest": Path(args.manifest).stem}) as run_:
            run_.log_metrics(metrics)
        print(
            f"{metrics['clips']} clips, {len(classes)} classes ({metrics['classes_without_clips']} with no clip): "
            f"weights min {metrics['weight_min']:.6g} median {metrics['weight_median']:.6g} "
            f"max {metrics['weight_max']:.6g} -> {args.out}"
        )

    run(body, parser, argv)


if __name__ == "__main__":
    main()

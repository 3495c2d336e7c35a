"""Give a features file the labels of a manifest (stage relabel: the enhanced training labels).

    python -m pipeline.stages.relabel --features data/features/train.h5 \
        --manifest data/manifests/train_enhanced.csv --classes data/classes.csv \
        --out data/features/train_enhanced.h5 --report data/reports/relabel.json

The fbanks are referenced through HDF5 virtual datasets, not copied; only the labels are written.
"""

from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.io import atomic_write_json
from pipeline.core.shards import unsharded_stem
from pipeline.core.tracking import stage_run
from pipeline.data.classes import read_classes
from pipeline.data.manifest import read_manifest
from pipeline.data.params import load_from_args
from pipeline.features.features import relabel


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="the features file whose fbanks are kept")
    parser.add_argument("--manifest", required=True, help="the manifest whose labels they get (same clips)")
    parser.add_argument("--classes", required=True, help="class list (index,mid,display_name)")
    parser.add_argument("--out", required=True, help="output HDF5 file, e.g. data/features/train_enhanced.h5")
    parser.add_argument("--report", required=True, help="output JSON report (clips, changed labels)")

    def body(args):
        params = load_from_args(args)
        clips = read_manifest(args.manifest)
        changed = relabel(args.features, clips, read_classes(args.classes), Path(args.out))
        report = {"source": args.features, "manifest": args.manifest, "clips": len(clips), "changed_labels": changed}
        atomic_write_json(args.report, report)
        with stage_run(params, "relabel", {"split": unsharded_stem(args.manifest), "features": args.features}) as run_:
            run_.log_metrics({"clips": len(clips), "changed_labels": changed})
        print(f"relabelled {args.features} with {args.manifest}: {changed} labels changed -> {args.out}")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

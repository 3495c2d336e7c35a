"""Compute the Kaldi fbank of every clip of a manifest into one HDF5 file (or one shard of it).

    python -m pipeline.stages.features --manifest data/manifests/train.csv --classes data/classes.csv \
        --out data/features/train.h5 --report data/reports/features_train.json
    ... --manifest data/manifests/train.shards/0.csv --out data/features/train.shards/0.h5
                      one prepare shard's clips (the DAGs' way: features shard i = prepare shard i)
    ... --shard 0/4   or a block of the whole manifest: writes train.shards/0.h5 (and its report)
    ... --merge       stitches the len(data.shards) shard files into train.h5 through HDF5 virtual datasets
"""

from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.report import StageReport
from pipeline.core.shards import add_shard_arguments, resolve_merge, resolve_shard, shard_path, unsharded_stem
from pipeline.core.tracking import stage_run
from pipeline.data.classes import read_classes
from pipeline.data.manifest import read_manifest
from pipeline.data.params import load_from_args
from pipeline.features.features import extract_features, merge_shards


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="the split's manifest (from the prepare stage)")
    parser.add_argument("--classes", required=True, help="class list (index,mid,display_name)")
    parser.add_argument("--out", required=True, help="output HDF5 file, e.g. data/features/train.h5")
    parser.add_argument("--report", required=True, help="output JSON report (requested/written/skipped)")
    add_shard_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def body(args):
        params = load_from_args(args)
        split = unsharded_stem(args.manifest)
        out, report_path = Path(args.out), Path(args.report)
        shard, merge = resolve_shard(args.shard, params.data.shards), resolve_merge(args.merge, params.data.shards)
        if merge:
            clips = merge_shards([shard_path(out, i) for i in range(merge)], out)
            report = StageReport.merged([StageReport.read(shard_path(report_path, i)) for i in range(merge)])
            listed = len(read_manifest(args.manifest))
            if (clips, listed) != (report.written, report.requested):
                raise PipelineError(
                    f"{out}: the {merge} shards hold {clips} clips and requested {report.requested}, "
                    f"but {args.manifest} lists {listed}; rerun the features shards of this manifest"
                )
        else:
            if shard:
                out, report_path = shard_path(out, shard[0]), shard_path(report_path, shard[0])
            report = extract_features(
                read_manifest(args.manifest),
                split=split,
                data_root=params.data.root,
                out=out,
                cfg=params.features,
                classes=read_classes(args.classes),
                on_bad=params.data.on_bad,
                shard=shard or (0, 1),
                progress=not args.no_progress,
            )
        report.write(report_path)
        with stage_run(params, "features", {"split": split, "shard": report.shard}) as run_:
            run_.log_metrics(
                {
                    "requested": report.requested,
                    "written": report.written,
                    "skipped": report.skipped,
                    "seconds": report.seconds,
                    "clips_per_second": report.timing()["clips_per_second"],
                }
            )
        print(
            f"features {split} [{report.shard}]: requested {report.requested}, written {report.written}, "
            f"skipped {report.skipped} -> {out} "
            f"({report.seconds:.1f} s, {report.timing()['clips_per_second']:.0f} clips/s)"
        )

    run(body, parser, argv)


if __name__ == "__main__":
    main()

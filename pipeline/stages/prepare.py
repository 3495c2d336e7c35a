"""Prepare one split: audio -> 16 kHz mono FLAC clips, the manifest <split>.csv and a JSON report.

    python -m pipeline.stages.prepare --split train --classes data/classes.csv \
        --audio-dir data/audio/train --manifest data/manifests/train.csv --report data/reports/prepare_train.json
    ... --shard 0       one shard of len(data.shards) (writes train.shards/0.csv and its report); 0/4 states the count
    ... --merge         stitch the shard manifests and reports into train.csv and its report
"""

from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.shards import add_shard_arguments, resolve_merge, resolve_shard, shard_path
from pipeline.core.tracking import stage_run
from pipeline.data.classes import read_classes
from pipeline.data.params import load_from_args
from pipeline.data.prepare import merge_shards, prepare_split, write_outputs
from pipeline.data.registry import list_split


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument("--split", required=True, help="split name, one of data.splits")
    parser.add_argument("--classes", required=True, help="class list written by the metadata stage")
    parser.add_argument("--audio-dir", help="where the FLAC clips go (default: <data.root>/audio/<split>)")
    parser.add_argument("--manifest", help="output manifest (default: <data.root>/manifests/<split>.csv)")
    parser.add_argument("--report", help="output report (default: <data.root>/reports/prepare_<split>.json)")
    add_shard_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def body(args):
        params = load_from_args(args)
        root = Path(params.data.root)
        manifest_path = Path(args.manifest or root / "manifests" / f"{args.split}.csv")
        report_path = Path(args.report or root / "reports" / f"prepare_{args.split}.json")
        shard, merge = resolve_shard(args.shard, params.data.shards), resolve_merge(args.merge, params.data.shards)
        if merge:
            manifest, report = merge_shards(manifest_path, report_path, merge)
        else:
            listing = list_split(params, args.split, read_classes(args.classes))
            manifest, report = prepare_split(
                listing,
                dataset=params.data.dataset,
                audio_dir=args.audio_dir or root / "audio" / args.split,
                root=root,
                on_bad=params.data.on_bad,
                shard=shard or (0, 1),
                progress=not args.no_progress,
            )
            if shard:
                manifest_path, report_path = shard_path(manifest_path, shard[0]), shard_path(report_path, shard[0])
        write_outputs(manifest, report, manifest_path, report_path)
        with stage_run(params, "prepare", {"split": args.split, "shard": report.shard}) as run_:
            run_.log_metrics(
                {
                    "requested": report.requested,
                    "written": report.written,
                    "skipped": report.skipped,
                    "seconds": report.seconds,
                }
            )
            run_.log_artifact(report_path)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped_by_reason.items())) or "none"
        print(
            f"{args.split} [{report.shard}]: requested {report.requested}, written {report.written} "
            f"(reused {report.reused}), skipped {report.skipped} ({reasons}) -> {manifest_path} "
            f"({report.seconds:.1f} s)"
        )

    run(body, parser, argv)


if __name__ == "__main__":
    main()

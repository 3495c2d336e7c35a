"""Normalisation statistics (mean, std) of the training split's fbank, or the paper's constants.

python -m pipeline.stages.stats --features data/features/train.h5 --out data/features/stats.json
"""

from pipeline.core.cli import params_parser, run
from pipeline.core.io import atomic_write_json
from pipeline.core.tracking import stage_run
from pipeline.data.params import load_from_args
from pipeline.features.features import normalisation_stats


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="the training split's HDF5 features")
    parser.add_argument("--out", required=True, help="output JSON: {mean, std, source}")

    def body(args):
        params = load_from_args(args)
        cfg = params.features
        if cfg.norm == "paper":
            stats = {"mean": cfg.paper_mean, "std": cfg.paper_std, "source": "paper"}
        else:
            stats = {**normalisation_stats(args.features), "source": "computed"}
        atomic_write_json(args.out, stats)
        with stage_run(params, "stats") as run_:
            run_.log_metrics({"mean": stats["mean"], "std": stats["std"]})
        print(f"normalisation ({stats['source']}): mean {stats['mean']:.4f}, std {stats['std']:.4f} -> {args.out}")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

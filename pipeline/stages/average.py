"""Weight-average one run's checkpoints of epochs average.wa_start..wa_end into one checkpoint.

    python -m pipeline.stages.average --run models/seed-1 --out models/wa/seed-1.pt \\
        [--train-features data/features/train.h5 --weights data/weights/train.csv]

The exact mean of `epoch_NNN.pt` for every epoch of the window, each counted once. With
average.bn_batches > 0 the averaged model's BatchNorm running statistics are then re-estimated
on that many training batches (augmented as in training), which needs --train-features (and
--weights when sampling.balanced). The output loads like any checkpoint (predict, evaluate).
"""

from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.tracking import stage_run
from pipeline.data.params import load_from_args
from pipeline.evaluation.average import average_checkpoints, reestimate_payload_batchnorm, select_epochs
from pipeline.labels.weights import weights_by_clip
from pipeline.training.checkpoint import save_checkpoint
from pipeline.training.device import resolve_device


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder of the train stage (epoch_NNN.pt files)")
    parser.add_argument("--out", required=True, help="the weight-averaged checkpoint to write")
    parser.add_argument("--train-features", help="training features (HDF5): needed when average.bn_batches > 0")
    parser.add_argument(
        "--weights", help="sampling weights CSV the run trained with (average.bn_batches > 0 and sampling.balanced)"
    )

    def body(args):
        params = load_from_args(args)
        cfg = params.average
        paths = select_epochs(args.run, cfg.wa_start, cfg.wa_end)
        if cfg.bn_batches and not args.train_features:
            raise PipelineError(
                f"average.bn_batches={cfg.bn_batches}: pass --train-features (and --weights) to "
                "re-estimate the BatchNorm statistics, or set average.bn_batches=0"
            )
        payload = average_checkpoints(paths)
        seed = payload.get("seed")
        with stage_run(params, "average", {"seed": seed}) as run_:
            if cfg.bn_batches:
                weights = weights_by_clip(args.weights) if args.weights else None
                device = resolve_device(params.train.device)
                payload = reestimate_payload_batchnorm(payload, params, args.train_features, weights, device)
            save_checkpoint(Path(args.out), payload)
            run_.log_params({"run_dir": args.run, "averaged_epochs": f"{cfg.wa_start}-{cfg.wa_end}"})
            run_.log_metrics({"members": len(paths), "bn_reestimated_batches": payload["bn_reestimated_batches"]})
        bn = (
            f", BatchNorm statistics re-estimated on {payload['bn_reestimated_batches']} training batches"
            if payload["bn_reestimated_batches"]
            else ""
        )
        print(f"seed {seed}: averaged epochs {cfg.wa_start}..{cfg.wa_end} ({len(paths)} checkpoints){bn} -> {args.out}")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

"""Train one model of the seed ensemble (stage train; the teacher stage runs this too); resumes from its
last epoch.

    python -m pipeline.stages.train --train-features data/features/train.h5 --val-features data/features/val.h5 \
        --weights data/weights/train.csv --stats data/features/stats.json --classes data/classes.csv \
        --out models/seed-1 --seed 1

With train.devices > 1 it starts itself under torchrun (one process per device, DDP).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_write_text
from pipeline.core.predictions import write_predictions
from pipeline.core.report import timing_path
from pipeline.core.tracking import stage_run
from pipeline.data.classes import read_classes
from pipeline.data.params import load_from_args
from pipeline.labels.plan import label_plan
from pipeline.labels.weights import weights_by_clip
from pipeline.training.device import distributed_from_env
from pipeline.training.loader import Normaliser
from pipeline.training.predict import predict_file
from pipeline.training.train import Inputs, train


def relaunch_under_torchrun(devices: int, module: str, argv: list[str]) -> int:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"]
    return subprocess.call([*command, "-m", module, *argv])


def skip_teacher(args, reason: str) -> None:
    """The teacher's outputs when there is no teacher (pipeline.labels.plan): DVC's DAG keeps its place."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "SKIPPED").write_text(reason + "\n")
    if args.predict_out:
        classes = read_classes(args.classes)
        write_predictions(args.predict_out, np.zeros((0, len(classes)), np.float32), [], list(classes.mids))
    if args.history:
        atomic_write_text(args.history, "epoch,val_mAP\n")
    print(reason)


def main(argv=None, role: str = "seed"):
    """`role` is `seed` (this stage) or `teacher` (pipeline.stages.teacher)."""
    parser = params_parser(__doc__.splitlines()[0] if role == "seed" else f"Train the {role}.")
    parser.add_argument("--train-features", required=True, help="training split features (HDF5)")
    parser.add_argument("--val-features", required=True, help="validation split features (HDF5)")
    parser.add_argument("--weights", help="sampling weights CSV (clip_id,weight); needed when sampling.balanced")
    parser.add_argument("--stats", required=True, help="normalisation stats JSON from the stats stage")
    parser.add_argument("--classes", required=True, help="class list")
    parser.add_argument("--out", required=True, help="run folder: epoch_NNN.pt, best.pt, last.pt, history.csv")
    parser.add_argument("--seed", type=int, required=True, help="the run's seed (one of train.seeds)")
    parser.add_argument("--history", help="also copy history.csv here when done (a DVC plots file)")
    parser.add_argument(
        "--predict-features",
        help="after training, score this features file with best.pt (last.pt when validating on eval, "
        "data.audioset.val: eval; the teacher scores the training split for label enhancement)",
    )
    parser.add_argument("--predict-out", help="predictions file for --predict-features (.npz or .h5)")
    parser.add_argument("--no-progress", action="store_true")

    def body(args):
        params = load_from_args(args)
        if bool(args.predict_features) != bool(args.predict_out):
            raise PipelineError("--predict-features and --predict-out go together")
        plan = label_plan(params)
        if role == "teacher" and not plan.teacher:
            skip_teacher(args, plan.reason)
            return
        if params.train.devices > 1 and "RANK" not in os.environ:
            module = "pipeline.stages.train" if role == "seed" else f"pipeline.stages.{role}"
            code = relaunch_under_torchrun(params.train.devices, module, sys.argv[1:] if argv is None else argv)
            if code:
                raise PipelineError(
                    f"torchrun with {params.train.devices} processes failed (exit {code}); see the messages above"
                )
            return
        dist_info = distributed_from_env()
        if dist_info.world_size > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if params.train.device.startswith("cuda") else "gloo")
        if params.sampling.balanced and not args.weights:
            raise PipelineError("sampling.balanced is true: pass --weights (from the weights stage)")
        # PSLA_RANK_REPORT: a folder where each DDP process records its draws and final weights (tests, audits)
        rank_report = Path(os.environ["PSLA_RANK_REPORT"]) if os.environ.get("PSLA_RANK_REPORT") else None
        inputs = Inputs(
            Path(args.train_features),
            Path(args.val_features),
            weights_by_clip(args.weights) if args.weights else None,
            Normaliser.from_file(args.stats),
            read_classes(args.classes),
        )
        try:
            if dist_info.main:
                with stage_run(params, "train", {"role": role, "seed": args.seed}) as run_:
                    best = train(
                        params, inputs, args.out, args.seed, run_, not args.no_progress, dist_info, rank_report
                    )
                if args.history:
                    history = Path(args.out) / "history.csv"
                    atomic_write_text(args.history, history.read_text())
                    if timing_path(history).is_file():  # its wall-clock timings beside it (ignored by git, DVC)
                        atomic_write_text(timing_path(args.history), timing_path(history).read_text())
                if args.predict_out:
                    # best.pt is chosen on validation; with data.audioset.val: eval that is the eval split,
                    # which must not reach the enhanced training labels: the teacher scores with last.pt then
                    teacher = Path(args.out) / ("last.pt" if params.data.validates_on_eval else "best.pt")
                    predict_file(params, teacher, args.predict_features, args.predict_out)
                print(f"{role} {args.seed}: best val mAP {best['val_mAP']:.4f} at epoch {best['epoch']} -> {args.out}")
            else:
                train(params, inputs, args.out, args.seed, None, False, dist_info, rank_report)
        finally:
            if dist_info.world_size > 1:
                import torch.distributed as dist

                dist.destroy_process_group()

    run(body, parser, argv)


if __name__ == "__main__":
    main()

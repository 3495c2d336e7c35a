"""Scores of a trained model on a features file, as a predictions file (clip ids and class ids inside).

    python -m pipeline.stages.predict --checkpoint models/teacher/best.pt --features data/features/train.h5 \
        --out models/teacher/predictions_train.npz

The checkpoint carries its model config, class ids and normalisation stats, so nothing else is needed.
"""

import torch

from pipeline.core.cli import params_parser, run
from pipeline.core.tracking import stage_run
from pipeline.data.params import load_from_args
from pipeline.training.predict import predict_file


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of the train or average stage")
    parser.add_argument("--features", required=True, help="features file (HDF5) to score")
    parser.add_argument("--out", required=True, help="predictions file (.npz or .h5)")
    parser.add_argument("--no-progress", action="store_true")

    def body(args):
        params = load_from_args(args)
        clips = predict_file(params, args.checkpoint, args.features, args.out, progress=not args.no_progress)
        with stage_run(params, "predict", {"checkpoint": args.checkpoint}) as run_:
            run_.log_metrics({"clips": clips})
        print(f"{clips} clips -> {args.out}")

    with torch.no_grad():
        run(body, parser, argv)


if __name__ == "__main__":
    main()

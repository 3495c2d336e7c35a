"""Scores of a trained model on a features file, as a predictions file (clip ids and class ids inside).

    python -m pipeline.stages.predict --checkpoint models/teacher/best.pt --features data/features/train.h5 \
        --out models/teacher/predictions_train.npz

The checkpoint carries its model config, class ids and normalisation stats, so nothing else is needed.
"""

import json

import h5py
import torch

from pipeline.cli import load_from_args, params_parser, run
from pipeline.errors import PipelineError
from pipeline.loader import FeatureDataset, Normaliser
from pipeline.predictions import write_predictions
from pipeline.tracking import stage_run
from pipeline.train import distributed_from_env, load_checkpoint, model_from_checkpoint, predict, resolve_device


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of the train or average stage")
    parser.add_argument("--features", required=True, help="features file (HDF5) to score")
    parser.add_argument("--out", required=True, help="predictions file (.npz or .h5)")
    parser.add_argument("--no-progress", action="store_true")

    def body(args):
        params = load_from_args(args)
        payload = load_checkpoint(args.checkpoint)
        with h5py.File(args.features, "r") as handle:
            file_classes = json.loads(handle.attrs["class_ids"])
        if file_classes != payload["class_ids"]:
            raise PipelineError(f"{args.features}: its classes differ from the checkpoint's {args.checkpoint}")
        device = resolve_device(params, distributed_from_env())
        model = model_from_checkpoint(payload).to(device)
        norm = Normaliser(**payload["norm"])
        scores, _ = predict(model, params, args.features, norm, device, progress=not args.no_progress)
        clip_ids = FeatureDataset(args.features).clip_ids()
        write_predictions(args.out, scores, clip_ids, payload["class_ids"])
        with stage_run(params, "predict", {"checkpoint": args.checkpoint}) as run_:
            run_.log_metrics({"clips": len(clip_ids)})
        print(f"{len(clip_ids)} clips x {scores.shape[1]} classes -> {args.out}")

    with torch.no_grad():
        run(body, parser, argv)


if __name__ == "__main__":
    main()

"""Import a released PSLA model (the psla repository's pretrained_models) as a checkpoint of this pipeline.

    python -m pipeline.stages.import_psla --checkpoint as_mdl_0_wa.pth --classes class_labels_indices.csv \
        --out models/psla/as_mdl_0_wa.pt [--params presets/audioset_full.yaml]

The output tags audio (`psla tag`), predicts, evaluates (`evaluate.extra_members`) and fine-tunes
(`model.pretrained`) like a checkpoint of the train stage. Without --params: the paper's AudioSet model
and features (1056 frames); FSD50K models: --params presets/fsd50k.yaml (3000 frames).
"""

from pipeline.core.cli import params_parser, run
from pipeline.core.io import atomic_path
from pipeline.data.classes import read_classes
from pipeline.data.params import load_from_args
from pipeline.training.import_psla import import_released, paper_audioset_params


def main(argv=None):
    parser = params_parser(
        __doc__.splitlines()[0],
        default=None,
        params_help="a paper preset (its model and features sections); default: the paper's AudioSet (1056 frames)",
    )
    parser.add_argument("--checkpoint", required=True, help="a released model file (as_mdl_0.pth, fsd_mdl_wa.pth, ...)")
    parser.add_argument("--classes", required=True, help="its class list (index,mid,display_name)")
    parser.add_argument("--out", required=True, help="the checkpoint to write (.pt)")

    def body(args):
        import torch

        params = load_from_args(args) if args.params else paper_audioset_params(args.overrides)
        payload = import_released(args.checkpoint, read_classes(args.classes), params)
        with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:  # a file object: no pid in the archive
            torch.save(payload, handle)
        classes, frames = len(payload["class_ids"]), payload["target_length"]
        print(f"{args.checkpoint}: {classes} classes, {frames}-frame input -> {args.out}")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

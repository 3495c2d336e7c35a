"""The released PSLA models as checkpoints of this pipeline.

The PSLA repository's `pretrained_models/README.md` links its released models (AudioSet `as_mdl_*.pth`,
FSD50K `fsd_mdl_*.pth`). Each is the state dict of `EffNetAttention(b=2, head_num=4)` saved from
`torch.nn.DataParallel`: `module.effnet.*` (an efficientnet_pytorch EfficientNet-B2 with a one-channel
stem) and `module.attention.{att,cla}.{i}.*`, `module.attention.head_weight` (the multi-head attention
pooling, which our `attention.` module mirrors name for name).

`import_released` maps the backbone's efficientnet_pytorch names onto timm's (`map_effnet_state`),
checks that the file is that model for the configured `model` section and class list, and returns one
of our checkpoints: the weights, the model config (the official padding, so the scores are the official
model's), the class list, the paper's fbank options and normalisation (the official loader's
`(fbank - mean) / std` with mean -4.6476, std 4.5699, after zero padding to the target length, which is
what our features + evaluation do). Tagging, predict, evaluate and `model.pretrained` read it like any
checkpoint of the train stage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.data.classes import ClassList
from pipeline.data.params import with_overrides
from pipeline.training.checkpoint import CHECKPOINT_FORMAT, checkpoint_record
from pipeline.training.loader import Normaliser
from pipeline.training.model import create_model

# The paper's model and features (egs/audioset/run.sh): what an import records unless --params says otherwise.
PAPER_MODEL = {
    "name": "tf_efficientnet_b2.aa_in1k",  # efficientnet_pytorch's B2 ImageNet weights (AutoAugment)
    "pretrained": "none",
    "stem": "random",
    "stem_init": "official",  # no effect on an import (the released stem is loaded); the paper's setting
    "heads": 4,
    "drop_path": 0.2,
    "bn_momentum": 0.01,
    "padding": "static",
}
PAPER_FEATURES = {"num_mel_bins": 128, "frame_shift_ms": 10.0, "frame_length_ms": 25.0, "norm": "paper"}

# efficientnet_pytorch's names -> timm's, inside one block. timm's first stage is a depthwise-separable
# block (no expansion: bn1 after the depthwise conv, conv_pw projects); the others are inverted
# residuals (conv_pw expands, bn1, conv_dw, bn2, conv_pwl projects, bn3).
_SEPARABLE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(_\w+)\.(\w+)$")


def _timm_blocks(backbone: nn.Module) -> list[tuple[str, dict[str, str]]]:
    """timm's blocks in order, flattened over stages: (`blocks.{stage}.{j}`, the name table for its kind)."""
    blocks = []
    for stage_index, stage in enumerate(getattr(backbone, "blocks", [])):
        for j, block in enumerate(stage):
            table = _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _SEPARABLE_BLOCK
            blocks.append((f"blocks.{stage_index}.{j}", table))
    return blocks


def map_effnet_state(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str = "the file"
) -> dict[str, torch.Tensor]:
    """An efficientnet_pytorch EfficientNet state dict (`_conv_stem`, `_blocks.{i}._depthwise_conv`, ...;
    its `_fc` classifier is dropped) under the key names of timm's matching `tf_efficientnet_b*`
    `backbone`. Any key, block count or shape that does not fit is a one-line PipelineError naming `source`."""
    blocks = _timm_blocks(backbone)
    target = backbone.state_dict()
    mapped, unknown = {}, []
    n_blocks = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))), default=-1)
    if n_blocks != len(blocks):
        raise PipelineError(
            f"{source}: its EfficientNet has {n_blocks} blocks, the model's "
            f"({getattr(backbone, 'pretrained_cfg', {}).get('architecture', 'backbone')}) has {len(blocks)}: "
            f"another EfficientNet size (the released PSLA models are B2)"
        )
    for key, value in state.items():
        if key.startswith("_fc."):
            continue
        block, top = _BLOCK_KEY.match(key), _TOP_KEY.match(key)
        if block:
            prefix, table = blocks[int(block.group(1))]
            layer = table.get(block.group(2))
            new = f"{prefix}.{layer}.{block.group(3)}" if layer else None
        else:
            layer = _TOP.get(top.group(1)) if top else None
            new = f"{layer}.{top.group(2)}" if layer else None
        if new is None or new not in target:
            unknown.append(key)
        else:
            mapped[new] = value
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    wrong = [k for k, v in mapped.items() if v.shape != target[k].shape]
    if unknown or missing or wrong:
        problems = [
            f"{label} (e.g. '{keys[0]}')"
            for label, keys in (("unknown keys", unknown), ("missing keys", missing), ("wrong shapes", wrong))
            if keys
        ]
        raise PipelineError(f"{source}: not an efficientnet_pytorch EfficientNet of this size ({'; '.join(problems)})")
    return mapped


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A released model file: a (DataParallel) state dict, read with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such file (download a released model from the psla repository first)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated download, an HTML page, a pickle of objects
        raise PipelineError(
            f"{path}: not a readable PyTorch state dict ({type(err).__name__}); download the file again"
        ) from None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        raise PipelineError(f"{path}: already a checkpoint of this pipeline; use it as it is")
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise PipelineError(f"{path}: holds no state dict (expected the dict of tensors a released PSLA model is)")
    return {str(k): v for k, v in obj.items()}


def split_released(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """(`effnet` backbone state, `attention` state) of an EffNetAttention state dict, `module.` or not."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    backbone = {k[len("effnet.") :]: v for k, v in state.items() if k.startswith("effnet.")}
    attention = {k[len("attention.") :]: v for k, v in state.items() if k.startswith("attention.")}
    if not backbone or not attention:
        raise PipelineError(
            f"{source}: not a PSLA EffNetAttention state dict (no 'module.effnet.*' and 'module.attention.*' keys)"
        )
    return backbone, attention


def _check_head(attention: Mapping[str, torch.Tensor], model: nn.Module, classes: ClassList, source: str) -> None:
    heads = len({k.split(".")[1] for k in attention if k.startswith("att.")})
    if "head_weight" not in attention or heads < 2:
        raise PipelineError(f"{source}: its pooling is not the multi-head attention of the released models")
    if heads != model.heads:
        raise PipelineError(f"{source}: has {heads} attention heads, model.heads is {model.heads}; set it to {heads}")
    outputs = attention["att.0.weight"].shape[0]
    if outputs != len(classes):
        raise PipelineError(
            f"{source}: scores {outputs} classes, the class list has {len(classes)} "
            f"(AudioSet models: class_labels_indices.csv, 527; FSD50K: 200)"
        )
    target = model.attention.state_dict()
    wrong = [k for k in target if k not in attention or attention[k].shape != target[k].shape]
    wrong += sorted(set(attention) - set(target))
    if wrong:
        raise PipelineError(f"{source}: its attention pooling does not fit the model (e.g. '{wrong[0]}')")


def paper_audioset_params(overrides: list[str] | None = None) -> Params:
    """The paper's AudioSet model and features (1056 frames), under `--set` overrides."""
    tree = {"model": dict(PAPER_MODEL), "features": {**PAPER_FEATURES, "target_length": 1056}}
    return with_overrides(tree, overrides, "the paper's AudioSet params")


def paper_params(params: Params | None = None) -> Params:
    """`params` (a paper preset), or without it the paper's AudioSet model and features (1056 frames),
    checked to describe the released models: 128-bin, 10 ms fbanks, the paper's normalisation, the
    official padding."""
    if params is None:
        params = paper_audioset_params()
    have = params.features.model_dump()
    for key, value in PAPER_FEATURES.items():
        if have[key] != value:
            raise PipelineError(
                f"features.{key} is {have[key]!r}; the released models take {value!r} "
                f"(pass a paper preset: --params presets/audioset_full.yaml)"
            )
    if params.model.padding != "static":
        raise PipelineError(
            "model.padding is dynamic; the released models need the official padding: model.padding: static "
            "(pass a paper preset: --params presets/audioset_full.yaml)"
        )
    return params


def import_released(path: str | Path, classes: ClassList, params: Params | None = None) -> dict:
    """One of our checkpoints (as the train stage writes them) holding the released model at `path`."""
    params = paper_params(params)
    model_cfg = params.model.model_copy(update={"pretrained": "none"})
    source = str(path)
    backbone_state, attention_state = split_released(read_state_dict(path), source)
    model = create_model(model_cfg, len(classes))
    model.backbone.load_state_dict(map_effnet_state(model.backbone, backbone_state, source), strict=False)
    _check_head(attention_state, model, classes, source)
    model.attention.load_state_dict(attention_state)
    features = params.features
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        **checkpoint_record(model_cfg, classes, features, Normaliser(features.paper_mean, features.paper_std), model),
        "imported_from": Path(path).name,
    }

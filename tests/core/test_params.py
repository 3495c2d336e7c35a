import pytest
import yaml

from pipeline.core.params import SECTIONS, Params, ParamsError, parse_override, to_yaml
from pipeline.data.params import PipelineParams, load_params
from tests.conftest import REPO, write_params

PRESETS = sorted((REPO / "presets").glob("*.yaml"))


def test_params_yaml_states_every_default_explicitly():
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    assert (
        set(tree)
        == set(SECTIONS)
        == {"data", "features", "sampling", "augment", "labels", "model", "train", "average", "evaluate", "tracking"}
    )
    # the file is the schema's defaults written out in full (make params), so DVC can track every key
    assert PipelineParams.model_validate(tree) == PipelineParams()
    assert yaml.safe_load(to_yaml(PipelineParams())) == tree


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_validates(preset):
    params = load_params(preset)
    assert isinstance(params, PipelineParams) and isinstance(params, Params)  # the annotation type everywhere


def test_presets_hold_the_papers_recipes():
    balanced = load_params(REPO / "presets/audioset_balanced.yaml")
    full = load_params(REPO / "presets/audioset_full.yaml")
    fsd = load_params(REPO / "presets/fsd50k.yaml")
    assert (balanced.train.lr, balanced.train.batch_size, balanced.train.epochs, balanced.train.lr_decay_start) == (
        1e-3,
        100,
        60,
        35,
    )
    assert (
        balanced.average.wa_start,
        balanced.average.wa_end,
        balanced.sampling.balanced,
        balanced.labels.enhance,
    ) == (41, 60, False, "mean")
    assert (full.train.lr, full.train.batch_size, full.train.epochs, full.train.lr_decay_start) == (1e-4, 100, 30, 10)
    assert (full.average.wa_start, full.average.wa_end, full.sampling.balanced, full.labels.enhance) == (
        16,
        30,
        True,
        "none",
    )
    assert (fsd.train.lr, fsd.train.batch_size, fsd.train.epochs, fsd.train.lr_decay_start) == (5e-4, 24, 40, 10)
    assert (fsd.average.wa_start, fsd.average.wa_end, fsd.sampling.balanced, fsd.labels.enhance) == (
        21,
        40,
        True,
        "mean",
    )
    assert balanced.features.target_length == full.features.target_length == 1056 and fsd.features.target_length == 3000
    for p in (balanced, full, fsd):
        assert (p.model.name, p.model.heads, p.train.weight_decay, p.train.betas) == (
            "tf_efficientnet_b2.aa_in1k",
            4,
            5e-7,
            (0.95, 0.999),
        )
        assert (p.augment.freqm, p.augment.timem, p.augment.mixup, p.augment.mixup_alpha) == (48, 192, 0.5, 10.0)
        assert (p.train.lr_decay, p.train.lr_decay_every, p.train.warmup_steps) == (0.5, 5, 1000)


# The official recipes, value for value (egs/audioset/run.sh, egs/fsd50k/run.sh, src/run.py, src/traintest.py,
# src/dataloaders/audioset_dataset.py); docs/fidelity.md says where each comes from.
OFFICIAL = {
    "audioset_balanced": {
        "data.dataset": "audioset",
        "data.audioset.unbalanced": False,
        "data.audioset.val": "eval",  # --data-val eval_data.json: trains on the whole balanced set
        "sampling.balanced": False,  # bal=False for the balanced subset
        "labels.enhance": "mean",  # balanced_train_data_type1_2_mean.json
        "labels.types": ["type1", "type2"],
        "train.lr": 1e-3,
        "train.batch_size": 100,
        "train.epochs": 60,
        "train.lr_decay_start": 35,
        "average.wa_start": 41,
        "average.wa_end": 60,
        "features.target_length": 1056,
    },
    "audioset_full": {
        "data.dataset": "audioset",
        "data.audioset.unbalanced": True,
        "data.audioset.val": "eval",
        "sampling.balanced": True,  # bal=${full_bal}=True
        "labels.enhance": "none",  # full_train_data.json (p=None)
        "train.lr": 1e-4,
        "train.batch_size": 100,
        "train.epochs": 30,
        "train.lr_decay_start": 10,
        "average.wa_start": 16,
        "average.wa_end": 30,
        "features.target_length": 1056,
    },
    "fsd50k": {
        "data.dataset": "fsd50k",
        "sampling.balanced": True,
        "labels.enhance": "mean",  # fsd50k_tr_full_type1_2_mean.json
        "labels.types": ["type1", "type2"],
        "train.lr": 5e-4,
        "train.batch_size": 24,
        "train.epochs": 40,
        "train.lr_decay_start": 10,
        "average.wa_start": 21,
        "average.wa_end": 40,
        "features.target_length": 3000,
        "evaluate.splits": ["eval", "val"],  # --data-val fsd50k_val_full.json, --data-eval fsd50k_eval_full.json
    },
}
OFFICIAL_EVERYWHERE = {
    "features.num_mel_bins": 128,
    "features.frame_shift_ms": 10.0,
    "features.frame_length_ms": 25.0,
    "features.norm": "paper",  # --dataset_mean -4.6476 --dataset_std 4.5699
    "features.paper_mean": -4.6476,
    "features.paper_std": 4.5699,
    "augment.freqm": 48,
    "augment.timem": 192,
    "augment.mixup": 0.5,
    "augment.mixup_alpha": 10.0,  # np.random.beta(10, 10)
    "augment.mixup_partner": "dataset",  # random.randint over the whole training set
    "model.name": "tf_efficientnet_b2.aa_in1k",  # efficientnet_pytorch's B2 ImageNet weights (AutoAugment)
    "model.heads": 4,
    "model.pretrained": "imagenet",
    "model.stem": "random",  # from_pretrained(..., in_channels=1) makes a fresh one-channel stem
    "model.stem_init": "official",  # ... under PyTorch's default conv init
    "model.drop_path": 0.2,  # drop_connect_rate 0.2, scaled by block index
    "model.bn_momentum": 0.01,  # batch_norm_momentum=0.99
    "model.padding": "static",  # Conv2dStaticSamePadding for the 260 x 260 native size
    "train.weight_decay": 5e-7,
    "train.betas": (0.95, 0.999),
    "train.lr_decay": 0.5,
    "train.lr_decay_every": 5,  # MultiStepLR milestones range(start, 1000, 5)
    "train.warmup": "paper",
    "train.warmup_steps": 1000,
    "train.amp": "none",
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_paper_presets_state_the_official_values(preset):
    params = load_params(REPO / "presets" / f"{preset}.yaml")
    for key, want in {**OFFICIAL_EVERYWHERE, **OFFICIAL[preset]}.items():
        value = params
        for part in key.split("."):
            value = getattr(value, part)
        assert value == want, f"{preset}: {key} is {value!r}, the official recipe has {want!r}"


def test_batch_size_is_the_global_batch_and_must_split_over_the_devices(tmp_path):
    params = load_params(REPO / "presets" / "audioset_full.yaml", ["train.devices=4"])
    assert params.train.batch_size == 100  # 25 per device, as the official DataParallel on 4 GPUs
    message = _error(tmp_path, {"train": {"batch_size": 100, "devices": 3}})
    assert "train: batch_size (100) is the global batch and must be a multiple of devices (3)" in message
    message = _error(tmp_path, {"train": {"warmup": "paper", "warmup_steps": 40}})
    assert "warmup_steps (40) must be a multiple of 50 with warmup: paper" in message


def _error(tmp_path, tree, overrides=None) -> str:
    path = write_params(tmp_path / "p.yaml", tree)
    with pytest.raises(ParamsError) as err:
        load_params(path, overrides)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(
    "tree, key, words",
    [
        ({"train": {"lrr": 1}}, "train.lrr", "unknown key"),
        ({"trian": {"lr": 1}}, "trian", "unknown key"),
        ({"data": {"demo": {"seeed": 1}}}, "data.demo.seeed", "unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs", "valid integer"),
        ({"train": {"epochs": 2.5}}, "train.epochs", "integer"),
        ({"sampling": {"balanced": "yes"}}, "sampling.balanced", "boolean"),
        ({"train": {"lr": -1}}, "train.lr", "greater than 0"),
        ({"augment": {"mixup": 1.5}}, "augment.mixup", "less than or equal to 1"),
        ({"labels": {"enhance": "max"}}, "labels.enhance", "'none', 'mean'"),
        ({"data": {"on_bad": "ignore"}}, "data.on_bad", "'skip' or 'fail'"),
        ({"data": {"dataset": "folder"}}, "data", "data.folder.csv"),
        ({"average": {"wa_start": 5, "wa_end": 3}}, "average", "wa_end must be >= wa_start"),
        ({"train": {"epochs": 3}}, "", "exceeds train.epochs"),
    ],
)
def test_invalid_params_are_one_line_errors_naming_key_and_file(tmp_path, tree, key, words):
    message = _error(tmp_path, tree)
    assert key in message and words in message, message


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: not valid YAML at line"):
        load_params(bad)
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    listy = write_params(tmp_path / "list.yaml", [1, 2])
    with pytest.raises(ParamsError, match="mapping of sections"):
        load_params(listy)


def test_overrides_are_yaml_and_nested(tmp_path):
    path = write_params(tmp_path / "p.yaml", {"train": {"lr": 0.5}})
    params = load_params(
        path,
        [
            "train.lr=1e-4",
            "train.seeds=[3, 4]",
            "sampling.balanced=false",
            "data.demo.n_val=7",
            "labels.enhance=25",
            "model.pretrained=/w/x.pt",
        ],
    )
    assert params.train.lr == 1e-4 and params.train.seeds == [3, 4] and params.sampling.balanced is False
    assert params.data.demo.n_val == 7 and params.labels.enhance == "25" and params.model.pretrained == "/w/x.pt"
    assert load_params(path).train.lr == 0.5  # the file itself is not modified


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lr", "expected section.key=value"),
        ("train=3", "section.key=value"),
        ("train.lr=[1", "not valid YAML"),
        ("train.lr.x=1", "train.lr: Input should be a valid number"),
        ("train.nope=1", "unknown key 'train.nope'"),
        ("train.lr=0", "train.lr"),
    ],
)
def test_bad_overrides(tmp_path, override, words):
    message = _error(tmp_path, {}, [override])
    assert words in message and "--set" in message


def test_override_into_a_value_is_rejected(tmp_path):
    message = _error(tmp_path, {"train": {"lr": 0.1}}, ["train.lr.x=1"])
    assert "'lr' is a value, not a section" in message


def test_parse_override_types():
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=x=y") == ("a.b", "x=y")


def test_digest_follows_params():
    assert Params().digest() == Params().digest()
    changed = Params()
    changed.train.lr = 0.1234
    assert changed.digest() != Params().digest()


def test_shards_are_numbered_and_a_count_is_accepted(tmp_path):
    write_params(tmp_path / "params.yaml", {})
    assert load_params(tmp_path / "params.yaml", ["data.shards=4"]).data.shards == [0, 1, 2, 3]
    assert load_params(tmp_path / "params.yaml", ["data.shards=[0, 1]"]).data.shards == [0, 1]
    for bad in ("data.shards=[1, 2]", "data.shards=[0, 0]", "data.shards=[]", "data.shards=0"):
        with pytest.raises(ParamsError) as err:
            load_params(tmp_path / "params.yaml", [bad])
        assert "data.shards" in str(err.value) and "\n" not in str(err.value)

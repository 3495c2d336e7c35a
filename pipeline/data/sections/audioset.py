"""The params section `data.audioset` (`AudioSetData`, with its `urls` sub-section) of the AudioSet plug-in
(pipeline.data.audioset), and the checks that apply when AudioSet is selected."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool

from pipeline.core import schema
from pipeline.core.params import DataSettings
from pipeline.core.schema import AUDIOSET_ONTOLOGY, NonNegative, Positive, Retries

NAME = "audioset"
SPLITS = ("train", "val", "eval")

AUDIOSET_CSV = "https://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv"


class AudioSetUrls(schema.Section):
    """Where the official AudioSet metadata is downloaded from (when not already in meta_dir)."""

    class_labels_indices: str = f"{AUDIOSET_CSV}/class_labels_indices.csv"
    ontology: str = AUDIOSET_ONTOLOGY
    balanced_train: str = f"{AUDIOSET_CSV}/balanced_train_segments.csv"
    unbalanced_train: str = f"{AUDIOSET_CSV}/unbalanced_train_segments.csv"
    eval: str = f"{AUDIOSET_CSV}/eval_segments.csv"


class AudioSetData(schema.Section):
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


Section = AudioSetData


def check(data: DataSettings, cfg: AudioSetData) -> None:
    """Cross-field checks on `data.audioset` when AudioSet is selected."""
    if cfg.source == "local" and not cfg.local_dir:
        raise ValueError("data.audioset.source=local needs data.audioset.local_dir")


def validates_on_eval(cfg: AudioSetData) -> bool:
    """`val: eval` (the official recipe): the val split lists the eval segments."""
    return cfg.val == "eval"

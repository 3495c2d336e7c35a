"""Tagging audio with a trained model: sliding windows scored in batches, aggregated per file.

- `load_tagger(checkpoint, device)`: the model and everything it needs, from one checkpoint of the
  train or average stage (class ids and names, fbank options, target length, normalisation stats,
  model config travel inside it; nothing else is read).
- `tag_file(tagger, path, ...)` / `tag_wave(tagger, wave, rate, ...)` / `tag_mono(...)` / `tag_blocks(...)`:
  a `TagResult` holding every window's scores, with `max` and `mean` per class over the windows,
  ranked by `max`.

Windows: `window` seconds starting every `hop` seconds from 0, as many as it takes for the last one
to reach the end of the file (it is cut at the end); a file shorter than one window is one window.
Each window goes through what a training clip went through: the file's channels averaged and
resampled to the checkpoint's rate (`pipeline.data.audio.downmix` and `resample`, as the prepare stage
does; here a block at a time, `resample_blocks`), the features stage's fbank with the checkpoint's
options (`fbank_from_options`), zero-padded to the model's input length, rounded to float16 as the
features stage stores it, normalised with the checkpoint's stats as in evaluation. The input length
is the checkpoint's target_length, or the frames of one full window when windows are longer than
that (the model pools over time, so a long window is scored whole rather than cut). A window of
exactly the training clip length therefore scores as that clip scores in evaluation.

Memory does not grow with the file's length: it is decoded, resampled and cut into windows a block
at a time (30 s), and only one batch of windows is turned into fbanks at a time; what is kept per
window is its scores.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.perf import tune_host_allocator
from pipeline.data.audio import check_finite, check_length, downmix, open_mono, resample_blocks
from pipeline.features.features import fbank_from_options
from pipeline.training.augment import prepare_eval_batch
from pipeline.training.checkpoint import check_checkpoint, load_checkpoint, model_from_checkpoint
from pipeline.training.device import resolve_device
from pipeline.training.loader import Normaliser

CSV_COLUMNS = ("file", "rank", "mid", "display_name", "max", "mean")
TIMELINE_COLUMNS = ("start", "end")


@dataclass
class Tagger:
    model: torch.nn.Module
    class_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    fbank_options: dict
    target_length: int
    norm: Normaliser
    device: torch.device
    checkpoint: str

    @property
    def sample_rate(self) -> int:
        return int(self.fbank_options["sample_frequency"])

    def _samples(self, option: str) -> int:
        # as Kaldi turns milliseconds into samples (torchaudio.compliance.kaldi truncates the same way)
        return int(self.sample_rate * float(self.fbank_options[option]) * 0.001)

    @property
    def frame_samples(self) -> int:
        return self._samples("frame_length")

    @property
    def shift_samples(self) -> int:
        return self._samples("frame_shift")

    @property
    def clip_seconds(self) -> float:
        """The length of the model's training clips (target_length frames)."""
        return self.target_length * float(self.fbank_options["frame_shift"]) / 1000

    def frames(self, n_samples: int) -> int:
        """Fbank frames of `n_samples` of audio (Kaldi's snip_edges framing, the pipeline's)."""
        return 0 if n_samples < self.frame_samples else 1 + (n_samples - self.frame_samples) // self.shift_samples


def load_tagger(checkpoint: str | Path, device: str | torch.device = "auto") -> Tagger:
    """A model ready to tag, from one checkpoint of the train or average stage (one-line errors otherwise)."""
    payload = load_checkpoint(checkpoint)
    check_checkpoint(checkpoint, payload, "tagging")
    device = device if isinstance(device, torch.device) else resolve_device(device, "--device")
    if device.type == "cpu":
        tune_host_allocator()  # batch-sized temporaries would otherwise page-fault on every batch
    model = model_from_checkpoint(payload).to(device).eval()
    return Tagger(
        model,
        tuple(payload["class_ids"]),
        tuple(payload["class_names"]),
        dict(payload["fbank_options"]),
        int(payload["target_length"]),
        Normaliser(**payload["norm"]),
        device,
        str(checkpoint),
    )


def check_windows(window: float, hop: float) -> None:
    if not window > 0:
        raise PipelineError(f"window {window} s: must be positive")
    if not 0 < hop <= window:
        raise PipelineError(
            f"hop {hop} s: must be positive and at most the window ({window} s), or the timeline would have gaps"
        )


def plan_windows(n_samples: int, window_samples: int, hop_samples: int) -> np.ndarray:
    """`[n, 2]` sample bounds: starts 0, hop, 2 hop, ..., as many as it takes for the last window to
    reach `n_samples` (where it is cut); one window when the audio is shorter than a window."""
    count = 1 if n_samples <= window_samples else 1 + -(-(n_samples - window_samples) // hop_samples)
    starts = np.arange(count, dtype=np.int64) * hop_samples
    return np.stack([starts, np.minimum(starts + window_samples, n_samples)], axis=1)


def input_length(tagger: Tagger, window_samples: int) -> int:
    """Model input frames: target_length, as the features stage pads and cuts clips, or a full
    window's frames when windows are longer (scored whole, not cut)."""
    return max(tagger.target_length, tagger.frames(window_samples))


def stream_windows(
    chunks: Iterable[np.ndarray], window_samples: int, hop_samples: int, frame_samples: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """`(start, end, audio)` of each window of `plan_windows` over a wave that arrives in chunks, as
    soon as the chunks cover it; only a window and a chunk are held. `audio` is the window's samples,
    or for a last window shorter than one analysis frame (a hop within a frame of the window) the
    wave's last frame, so it is scored rather than dropped (the timeline still says where it is)."""
    held, base, total, index = np.zeros(0, np.float32), 0, 0, 0  # held: the wave from sample `base` on
    for chunk in chunks:
        held = np.concatenate([held, chunk])
        total += len(chunk)
        while index * hop_samples + window_samples <= total:
            start = index * hop_samples
            yield start, start + window_samples, held[start - base : start + window_samples - base]
            index += 1
        keep = max(0, index * hop_samples - frame_samples)
        held, base = held[keep - base :], keep
    for start, end in plan_windows(total, window_samples, hop_samples)[index:].tolist():
        first = max(0, end - frame_samples) if end - start < frame_samples else start
        yield start, end, held[first - base : end - base]


def window_fbanks(tagger: Tagger, windows: list[np.ndarray], length: int) -> np.ndarray:
    """`[n, length, mel bins]` float16: each window's fbank as the features stage computes and stores it."""
    return np.stack(
        [fbank_from_options(audio, tagger.fbank_options, length)[0].astype(np.float16) for audio in windows]
    )


@torch.inference_mode()
def score_windows(
    tagger: Tagger,
    windows: Iterable[tuple[int, int, np.ndarray]],
    length: int,
    batch_size: int = 16,
    bar: tqdm | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`([n, 2] sample bounds, [n, classes] float32 scores)` of the windows, `batch_size` per forward pass."""
    bounds, scores, batch = [], [], []

    def flush():
        x = torch.from_numpy(window_fbanks(tagger, [audio for _, _, audio in batch], length)).to(tagger.device)
        scores.append(tagger.model(prepare_eval_batch(x, tagger.norm.mean, tagger.norm.std)).float().cpu().numpy())
        bounds.extend((start, end) for start, end, _ in batch)
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.array(bounds, np.int64).reshape(-1, 2), np.concatenate(scores)


@dataclass
class TagResult:
    """One file's tags: every window's scores, and `max` / `mean` per class over the windows."""

    source: str
    duration: float  # seconds, as decoded
    sample_rate: int  # the file's own
    channels: int
    window: float
    hop: float
    starts: np.ndarray  # [windows] seconds
    ends: np.ndarray  # [windows] seconds; the last one is `duration`
    scores: np.ndarray  # [windows, classes] probabilities
    class_ids: tuple[str, ...]
    class_names: tuple[str, ...]

    @property
    def max(self) -> np.ndarray:
        return self.scores.max(axis=0)

    @property
    def mean(self) -> np.ndarray:
        return self.scores.mean(axis=0)

    def ranking(self, top_k: int = 0) -> list[int]:
        """Class indices by max score over the windows, highest first (ties: higher mean first); 0: all."""
        order = np.lexsort((-self.mean, -self.max))
        return order[:top_k].tolist() if top_k > 0 else order.tolist()

    def window_ranking(self, index: int, top_k: int = 0) -> list[int]:
        order = np.argsort(-self.scores[index], kind="stable")
        return order[:top_k].tolist() if top_k > 0 else order.tolist()

    def as_dict(self, top_k: int = 0, timeline: bool = False) -> dict:
        """The JSON form: the top classes with max and mean, and each window's top classes with `timeline`."""
        peak, mean = self.max, self.mean
        record = {
            "file": self.source,
            "duration": round(self.duration, 6),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "windows": len(self.starts),
            "classes": [
                {
                    "rank": rank,
                    "mid": self.class_ids[c],
                    "display_name": self.class_names[c],
                    "max": _score(peak[c]),
                    "mean": _score(mean[c]),
                }
                for rank, c in enumerate(self.ranking(top_k), 1)
            ],
        }
        if timeline:
            record["timeline"] = [
                {
                    "start": round(float(self.starts[w]), 6),
                    "end": round(float(self.ends[w]), 6),
                    "classes": [
                        {
                            "rank": rank,
                            "mid": self.class_ids[c],
                            "display_name": self.class_names[c],
                            "score": _score(self.scores[w, c]),
                        }
                        for rank, c in enumerate(self.window_ranking(w, top_k), 1)
                    ],
                }
                for w in range(len(self.starts))
            ]
        return record


def _score(value) -> float:
    return round(float(value), 6)


def tag_wave(
    tagger: Tagger,
    wave: np.ndarray,
    rate: int,
    *,
    window: float = 10.0,
    hop: float = 5.0,
    batch_size: int = 16,
    progress: bool = False,
    source: str = "<wave>",
) -> TagResult:
    """Tag a decoded waveform (`[samples]` or `[channels, samples]`, any rate)."""
    wave = wave if wave.ndim == 2 else wave[None]
    return tag_mono(
        tagger,
        downmix(wave),
        rate,
        wave.shape[0],
        window=window,
        hop=hop,
        batch_size=batch_size,
        progress=progress,
        source=source,
    )


def tag_file(tagger: Tagger, path: str | Path, **options) -> TagResult:
    """Tag an audio file of any common format, rate, channel count and length; `AudioProblem` if it
    cannot be read. `options`: those of `tag_wave` (window, hop, batch_size, progress). The file is
    decoded, resampled and windowed a block at a time (`pipeline.data.audio.open_mono`), so memory does not
    grow with its length."""
    stream = open_mono(path)
    return tag_blocks(
        tagger, stream.blocks, stream.rate, stream.channels, frames=stream.frames, source=str(path), **options
    )


def tag_mono(tagger: Tagger, mono: np.ndarray, rate: int, channels: int = 1, **options) -> TagResult:
    """Tag a float32 mono wave at `rate` (its channels already averaged; `channels` is for the record)."""
    return tag_blocks(tagger, [mono], rate, channels, frames=len(mono), **options)


def tag_blocks(
    tagger: Tagger,
    blocks: Iterable[np.ndarray],
    rate: int,
    channels: int = 1,
    *,
    frames: int | None = None,
    window: float = 10.0,
    hop: float = 5.0,
    batch_size: int = 16,
    progress: bool = False,
    source: str = "<wave>",
) -> TagResult:
    """Tag a float32 mono wave at `rate` that arrives in consecutive blocks; `frames`, its length if
    known, only sizes the progress bar."""
    check_windows(window, hop)
    sr = tagger.sample_rate
    window_samples, hop_samples = int(round(window * sr)), int(round(hop * sr))
    if window_samples < tagger.frame_samples or hop_samples < 1:
        raise PipelineError(
            f"window {window} s: shorter than one {tagger.fbank_options['frame_length']} ms analysis frame"
        )
    decoded = 0

    def checked(blocks):
        """The blocks, counted; bad audio is an AudioProblem before the last windows are scored."""
        nonlocal decoded
        for block in blocks:
            check_finite(block, source)
            decoded += len(block)
            yield block
        check_length(decoded, rate, source)  # at least 25 ms: at least one frame at the checkpoint's rate

    windows = stream_windows(
        resample_blocks(checked(blocks), rate, sr), window_samples, hop_samples, tagger.frame_samples
    )
    expected = len(plan_windows(-(-frames * sr // rate), window_samples, hop_samples)) if frames else None
    # delay: a bar only for files that take a while; disable=None: only on a terminal
    with tqdm(
        total=expected,
        desc=Path(source).name,
        unit="window",
        disable=None if progress else True,
        delay=1.0,
        mininterval=0.5,
        leave=False,
    ) as bar:
        bounds, scores = score_windows(tagger, windows, input_length(tagger, window_samples), batch_size, bar)
    duration = decoded / rate
    starts = bounds[:, 0] / sr
    # the file's own duration ends the timeline (resampling may round the length up by a fraction of a sample)
    ends = np.minimum(starts + window_samples / sr, duration)
    ends[-1] = duration
    return TagResult(
        source, duration, rate, channels, window, hop, starts, ends, scores, tagger.class_ids, tagger.class_names
    )


# ----------------------------------------------------------------------------------------------
# output formats


def format_table(result: TagResult, top_k: int = 10, timeline: bool = False) -> str:
    """Human-readable: a header line, the ranked classes (rank, class, mid, max, mean), the timeline."""
    peak, mean = result.max, result.mean
    ranked = result.ranking(top_k)
    name_width = max([5, *(len(result.class_names[c]) for c in ranked)])
    mid_width = max([3, *(len(result.class_ids[c]) for c in ranked)])
    windows = len(result.starts)
    lines = [
        f"{result.source}: {result.duration:.2f} s, {result.sample_rate} Hz, {result.channels} channel"
        f"{'s' if result.channels != 1 else ''}; {windows} window{'s' if windows != 1 else ''} of "
        f"{result.window:g} s every {result.hop:g} s; ranked by max over windows",
        f"{'rank':>4}  {'class':<{name_width}}  {'mid':<{mid_width}}  {'max':>6}  {'mean':>6}",
    ]
    for rank, c in enumerate(ranked, 1):
        lines.append(
            f"{rank:>4}  {result.class_names[c]:<{name_width}}  {result.class_ids[c]:<{mid_width}}  "
            f"{peak[c]:>6.3f}  {mean[c]:>6.3f}"
        )
    if timeline:
        lines.append("timeline (start - end s: top classes by score):")
        for w in range(windows):
            tags = " | ".join(
                f"{result.class_names[c]} {result.scores[w, c]:.3f}" for c in result.window_ranking(w, top_k)
            )
            lines.append(f"  {result.starts[w]:9.2f} - {result.ends[w]:9.2f}  {tags}")
    return "\n".join(lines)


def csv_header(timeline: bool = False) -> list[str]:
    return list(CSV_COLUMNS + (TIMELINE_COLUMNS if timeline else ()))


def csv_rows(result: TagResult, top_k: int = 10, timeline: bool = False) -> list[list]:
    """Rows of `csv_header(timeline)`: the file's ranked classes; with `timeline`, then each window's
    ranked classes with start and end filled (a window's max and mean are both its score)."""
    peak, mean = result.max, result.mean
    rows = [
        [
            result.source,
            rank,
            result.class_ids[c],
            result.class_names[c],
            _score(peak[c]),
            _score(mean[c]),
            *(["", ""] if timeline else []),
        ]
        for rank, c in enumerate(result.ranking(top_k), 1)
    ]
    if timeline:
        for w in range(len(result.starts)):
            start, end = round(float(result.starts[w]), 6), round(float(result.ends[w]), 6)
            for rank, c in enumerate(result.window_ranking(w, top_k), 1):
                score = _score(result.scores[w, c])
                rows.append([result.source, rank, result.class_ids[c], result.class_names[c], score, score, start, end])
    return rows


def format_csv(rows: list[list], header: list[str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()

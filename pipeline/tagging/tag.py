"""Tagging audio with a trained model: sliding windows scored in batches, aggregated per file.

- `load_tagger(model, device)`: the model and everything it needs, from one checkpoint of the
  train or average stage (class ids and names, fbank options, target length, normalisation stats,
  model config travel inside it; nothing else is read), from a folder written by `psla export
  --format folder` (safetensors + config.json), or from an ONNX file of `psla export --format onnx`
  (run with onnxruntime; the fbank is computed here, as for the others).
- `tag_file(tagger, path, ...)` / `tag_wave(tagger, wave, rate, ...)` / `tag_mono(...)` / `tag_blocks(...)`:
  a `TagResult` holding every window's scores, with `max` and `mean` per class over the windows,
  ranked by `max`; with `frame_sink`, the frame scores (`pipeline.tagging.frames`) go to it as they
  become final.

Windows: `window` seconds starting every `hop` seconds from 0, as many as it takes for the last one
to reach the end of the file (it is cut at the end); a file shorter than one window is one window.
Without `window`, it is the model's training clip length (`target_length` frames of `frame_shift`:
3 s in the demo, 10.56 s for the paper's AudioSet model) and the hop half of it (`default_windows`),
so that a clip of the training length is one window scored exactly as evaluation scores it; a
shorter file is zero-padded as the features stage pads clips.
Each window goes through what a training clip went through: the file's channels averaged and
resampled to the checkpoint's rate (`pipeline.data.audio.downmix` and `resample`, as the prepare stage
does; here a block at a time, `resample_blocks`), the features stage's fbank with the checkpoint's
options (`fbank_from_options`), zero-padded to the model's input length, rounded to float16 as the
features stage stores it, normalised with the checkpoint's stats as in evaluation. The input length
is the checkpoint's target_length, or the frames of one full window when windows are longer than
that (the model pools over time, so a long window is scored whole rather than cut). A window of
exactly the training clip length therefore scores as that clip scores in evaluation.

Frames: the network also gives per-frame class probabilities (`PSLAModel.clip_and_frames`: one per
backbone time step, `target_length * frame_shift / T'` seconds, 0.6 s in the demo); the windows' frames
are stitched onto one grid of that step, overlaps averaged (`pipeline.tagging.frames.FrameStitcher`).

Memory does not grow with the file's length: it is decoded, resampled and cut into windows a block
at a time (30 s), and only one batch of windows is turned into fbanks at a time; what is kept per
window is its scores, and frames are handed on as soon as no later window can change them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.perf import tune_host_allocator
from pipeline.data.audio import check_finite, check_length, downmix, open_mono, resample_blocks
from pipeline.tagging.fbanks import fbanks
from pipeline.tagging.frames import FrameChunk, FrameStitcher, csv_text
from pipeline.tagging.onnx_model import OnnxNetwork
from pipeline.training.augment import prepare_eval_batch
from pipeline.training.checkpoint import check_checkpoint, load_checkpoint, model_from_checkpoint
from pipeline.training.device import resolve_device
from pipeline.training.loader import Normaliser
from pipeline.training.model_folder import read_model_folder

CSV_COLUMNS = ("file", "rank", "mid", "display_name", "max", "mean")
DECISION_COLUMNS = ("threshold", "present")
TIMELINE_COLUMNS = ("start", "end")


class TorchNetwork:
    """A PSLA model on a device: `run(fbank)` -> (clip, frame) probabilities, as numpy float32."""

    def __init__(self, model: torch.nn.Module, norm: Normaliser, device: torch.device):
        self.model, self.norm, self.device = model, norm, device

    @torch.inference_mode()
    def run(self, fbank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`[B, T, F]` fbanks as the features stage stores them (not normalised) ->
        `([B, classes] clip scores, [B, T', classes] frame scores)`."""
        x = prepare_eval_batch(torch.from_numpy(fbank).to(self.device), self.norm.mean, self.norm.std)
        clip, frames = self.model.clip_and_frames(x)
        return clip.float().cpu().numpy(), frames.float().cpu().numpy()


@dataclass
class Tagger:
    network: TorchNetwork  # or pipeline.tagging.onnx_model.OnnxNetwork: the same `run`
    class_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    fbank_options: dict
    target_length: int
    norm: Normaliser
    device: torch.device
    checkpoint: str  # the model's path: a checkpoint, an exported folder or an ONNX file
    kind: str = "checkpoint"  # checkpoint | folder | onnx
    thresholds: dict | None = None  # an exported model's: {"rule", "values" (per class), "split", ...}
    provenance: dict = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        """The torch model (not for an ONNX file)."""
        return self.network.model

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

    def default_windows(self) -> tuple[float, float]:
        """`(window, hop)` when none is given: the training clip length, and half of it."""
        return self.windows()

    def windows(self, window: float | None = None, hop: float | None = None) -> tuple[float, float]:
        """`(window, hop)` as tagging uses them: the window by default the training clip length, the hop
        by default half the window."""
        window = window or self.clip_seconds
        return window, hop or window / 2


def load_tagger(model: str | Path, device: str | torch.device = "auto") -> Tagger:
    """A model ready to tag (one-line errors otherwise): a checkpoint of the train or average stage,
    a folder of `psla export --format folder`, or an ONNX file of `psla export --format onnx`."""
    path = Path(model)
    device = device if isinstance(device, torch.device) else resolve_device(device, "--device")
    if path.suffix.lower() == ".onnx":
        network = OnnxNetwork(path)
        payload, kind, device = network.payload, "onnx", torch.device("cpu")
    else:
        if path.is_dir():
            payload, kind = read_model_folder(path), "folder"
        else:
            payload, kind = load_checkpoint(path), "checkpoint"
            check_checkpoint(path, payload, "tagging")
        if device.type == "cpu":
            tune_host_allocator()  # batch-sized temporaries would otherwise page-fault on every batch
        norm = Normaliser(**payload["norm"])
        network = TorchNetwork(model_from_checkpoint(payload).to(device).eval(), norm, device)
    return Tagger(
        network,
        tuple(payload["class_ids"]),
        tuple(payload["class_names"]),
        dict(payload["fbank_options"]),
        int(payload["target_length"]),
        Normaliser(**payload["norm"]),
        device,
        str(model),
        kind,
        payload.get("thresholds"),
        dict(payload.get("provenance") or {}),
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
    """`[n, length, mel bins]` float16: each window's fbank as the features stage computes and stores it
    (`fbank_from_options`, rounded to float16), the batch's windows in one call (`pipeline.tagging.fbanks`:
    the same numbers, bit for bit)."""
    return fbanks(windows, tagger.fbank_options, length)


WindowFrames = Callable[[int, int, np.ndarray], None]  # (start sample, end sample, [T', classes] frames)


def score_windows(
    tagger: Tagger,
    windows: Iterable[tuple[int, int, np.ndarray]],
    length: int,
    batch_size: int = 16,
    bar: tqdm | None = None,
    on_frames: WindowFrames | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`([n, 2] sample bounds, [n, classes] float32 scores)` of the windows, `batch_size` per forward
    pass; each window's frame scores go to `on_frames`, in window order."""
    bounds, scores, batch = [], [], []

    def flush():
        clip, frames = tagger.network.run(window_fbanks(tagger, [audio for _, _, audio in batch], length))
        scores.append(clip)
        bounds.extend((start, end) for start, end, _ in batch)
        if on_frames is not None:
            for (start, end, _), window_frames in zip(batch, frames, strict=True):
                on_frames(start, end, window_frames)
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
    frame_step: float = 0.0  # seconds per frame score (0: no frames were asked for)

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

    def as_dict(self, top_k: int = 0, timeline: bool = False, thresholds: np.ndarray | None = None) -> dict:
        """The JSON form: the top classes with max and mean, and each window's top classes with `timeline`;
        with `thresholds`, each class's threshold and whether its max reaches it, and the present classes."""
        peak, mean = self.max, self.mean
        record = {
            "file": self.source,
            "duration": round(self.duration, 6),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "windows": len(self.starts),
        }
        if thresholds is not None:
            record["present"] = [self.class_ids[c] for c in self.present(thresholds)]
        record["classes"] = [
            {
                "rank": rank,
                "mid": self.class_ids[c],
                "display_name": self.class_names[c],
                "max": _score(peak[c]),
                "mean": _score(mean[c]),
                **(
                    {"threshold": _score(thresholds[c]), "present": bool(peak[c] >= thresholds[c])}
                    if thresholds is not None
                    else {}
                ),
            }
            for rank, c in enumerate(self.ranking(top_k), 1)
        ]
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

    def present(self, thresholds: np.ndarray) -> list[int]:
        """The classes whose max over the windows reaches their threshold, in ranking order."""
        return [c for c in self.ranking() if self.max[c] >= thresholds[c]]


def _score(value) -> float:
    return round(float(value), 6)


def tag_wave(tagger: Tagger, wave: np.ndarray, rate: int, **options) -> TagResult:
    """Tag a decoded waveform (`[samples]` or `[channels, samples]`, any rate); `options`: `tag_blocks`'."""
    wave = wave if wave.ndim == 2 else wave[None]
    return tag_mono(tagger, downmix(wave), rate, wave.shape[0], **options)


def tag_file(tagger: Tagger, path: str | Path, **options) -> TagResult:
    """Tag an audio file of any common format, rate, channel count and length; `AudioProblem` if it
    cannot be read. `options`: those of `tag_blocks` (window, hop, batch_size, progress, frame_sink). The file is
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
    window: float | None = None,
    hop: float | None = None,
    batch_size: int = 16,
    progress: bool = False,
    source: str = "<wave>",
    frame_sink: Callable[[FrameChunk], None] | None = None,
) -> TagResult:
    """Tag a float32 mono wave at `rate` that arrives in consecutive blocks; `frames`, its length if
    known, only sizes the progress bar. `window`/`hop` default to `tagger.default_windows()` (a hop
    alone: with the default window). With `frame_sink`, the file's frame scores are passed to it in
    order, a `FrameChunk` at a time, each as soon as it is final (the last when the file ends)."""
    window, hop = tagger.windows(window, hop)
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
        length = input_length(tagger, window_samples)
        stitch = _Stitching(tagger, length, frame_sink) if frame_sink is not None else None
        bounds, scores = score_windows(tagger, windows, length, batch_size, bar, stitch.add if stitch else None)
    duration = decoded / rate
    if stitch is not None:
        stitch.finish(duration)
    starts = bounds[:, 0] / sr
    # the file's own duration ends the timeline (resampling may round the length up by a fraction of a sample)
    ends = np.minimum(starts + window_samples / sr, duration)
    ends[-1] = duration
    return TagResult(
        source,
        duration,
        rate,
        channels,
        window,
        hop,
        starts,
        ends,
        scores,
        tagger.class_ids,
        tagger.class_names,
        stitch.step if stitch is not None else 0.0,
    )


class _Stitching:
    """Windows' frame scores onto one grid, handed to `sink` as they become final. The step is that of
    the network's output: `length` input frames over its T' frames (known from the first window)."""

    def __init__(self, tagger: Tagger, length: int, sink: Callable[[FrameChunk], None]):
        self.tagger, self.length, self.sink = tagger, length, sink
        self.stitcher: FrameStitcher | None = None
        self.step = 0.0

    def add(self, start: int, end: int, frames: np.ndarray) -> None:
        sr = self.tagger.sample_rate
        if self.stitcher is None:
            self.step = self.length * float(self.tagger.fbank_options["frame_shift"]) / 1000 / len(frames)
            self.stitcher = FrameStitcher(self.step, frames.shape[1])
        self._emit(self.stitcher.add(start / sr, frames, end / sr))

    def finish(self, duration: float) -> None:
        if self.stitcher is not None:
            self._emit(self.stitcher.finish(duration))

    def _emit(self, chunk: FrameChunk) -> None:
        if len(chunk.times):
            self.sink(chunk)


# ----------------------------------------------------------------------------------------------
# output formats


def format_table(
    result: TagResult, top_k: int = 10, timeline: bool = False, thresholds: np.ndarray | None = None
) -> str:
    """Human-readable: a header line, the ranked classes (rank, class, mid, max, mean; with `thresholds`
    also the threshold and whether the class is present), the timeline."""
    peak, mean = result.max, result.mean
    ranked = result.ranking(top_k)
    name_width = max([5, *(len(result.class_names[c]) for c in ranked)])
    mid_width = max([3, *(len(result.class_ids[c]) for c in ranked)])
    windows = len(result.starts)
    lines = [
        f"{result.source}: {result.duration:.2f} s, {result.sample_rate} Hz, {result.channels} channel"
        f"{'s' if result.channels != 1 else ''}; {windows} window{'s' if windows != 1 else ''} of "
        f"{result.window:g} s every {result.hop:g} s; ranked by max over windows",
    ]
    decided = thresholds is not None
    if decided:
        present = [result.class_names[c] for c in result.present(thresholds)]
        lines.append(f"present ({len(present)}): {', '.join(present) or 'none'}")
    extra = f"  {'thresh':>6}  present" if decided else ""
    lines.append(f"{'rank':>4}  {'class':<{name_width}}  {'mid':<{mid_width}}  {'max':>6}  {'mean':>6}{extra}")
    for rank, c in enumerate(ranked, 1):
        line = (
            f"{rank:>4}  {result.class_names[c]:<{name_width}}  {result.class_ids[c]:<{mid_width}}  "
            f"{peak[c]:>6.3f}  {mean[c]:>6.3f}"
        )
        if decided:
            line += f"  {thresholds[c]:>6.3f}  {'yes' if peak[c] >= thresholds[c] else 'no'}"
        lines.append(line)
    if timeline:
        lines.append("timeline (start - end s: top classes by score):")
        for w in range(windows):
            tags = " | ".join(
                f"{result.class_names[c]} {result.scores[w, c]:.3f}" for c in result.window_ranking(w, top_k)
            )
            lines.append(f"  {result.starts[w]:9.2f} - {result.ends[w]:9.2f}  {tags}")
    return "\n".join(lines)


def csv_header(timeline: bool = False, decided: bool = False) -> list[str]:
    return list(CSV_COLUMNS + (DECISION_COLUMNS if decided else ()) + (TIMELINE_COLUMNS if timeline else ()))


def csv_rows(
    result: TagResult, top_k: int = 10, timeline: bool = False, thresholds: np.ndarray | None = None
) -> list[list]:
    """Rows of `csv_header(timeline, decided)`: the file's ranked classes (with `thresholds`, each one's
    threshold and 1/0 for present); with `timeline`, then each window's ranked classes with start and
    end filled (a window's max and mean are both its score; its decision columns are empty)."""
    peak, mean = result.max, result.mean
    decided = thresholds is not None

    def decision(c):
        return [_score(thresholds[c]), int(peak[c] >= thresholds[c])] if decided else []

    rows = [
        [
            result.source,
            rank,
            result.class_ids[c],
            result.class_names[c],
            _score(peak[c]),
            _score(mean[c]),
            *decision(c),
            *(["", ""] if timeline else []),
        ]
        for rank, c in enumerate(result.ranking(top_k), 1)
    ]
    if timeline:
        blank = ["", ""] if decided else []
        for w in range(len(result.starts)):
            start, end = round(float(result.starts[w]), 6), round(float(result.ends[w]), 6)
            for rank, c in enumerate(result.window_ranking(w, top_k), 1):
                score = _score(result.scores[w, c])
                rows.append(
                    [result.source, rank, result.class_ids[c], result.class_names[c], score, score, *blank, start, end]
                )
    return rows


def format_csv(rows: list[list], header: list[str] | None = None) -> str:
    return csv_text([header, *rows] if header else rows)

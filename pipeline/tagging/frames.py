"""Frame scores of a whole file, stitched from the frame scores of its overlapping windows.

`psla tag` scores a file window by window (`pipeline.tagging.tag`); the model also gives each window's
per-frame class probabilities (`PSLAModel.clip_and_frames`: `[T', classes]` per window). One model
frame lasts `step = L * frame_shift / T'` seconds (L: the model's input frames, T': the backbone's
output frames; 150 * 0.02 / 5 = 0.6 s in the demo, 1056 * 0.01 / 33 = 0.32 s for the paper's AudioSet
model), the same for every window of a file, and window frame j covers
`[window_start + j * step, window_start + (j + 1) * step)`, cut at the end of the window's audio
(`end = min(window_start + window, duration)`); frames that start at or after it (the zero padding
of a short window) are dropped. If a window's frames fall short of its end (a window longer than the
training clips is scored whole, and its fbank stops up to one analysis frame before the end), its
last frame is stretched to the end, so the windows still cover the whole file.

The file's frames lie on one global grid, frame k = `[k * step, (k + 1) * step)` from 0, the last one
cut at the file's duration. Window starts are multiples of the hop, which is generally not a multiple
of `step`, so window frames straddle global frames: each global frame's score is the mean of every
window frame that overlaps it, weighted by how long it overlaps the frame (overlapping windows are
averaged, weighted by how long they overlap the frame). Where one window alone covers a global frame
that coincides with one of its frames, the score is that frame's.

`FrameStitcher` does this as the windows arrive, in start order: `add` returns the global frames no
later window can reach (those ending at or before the new window's start, since later windows start
later), `finish` the rest. Only the frames still open are held, about `window / step + 2` of them,
whatever the file's length.

Frame scores and clip scores (`FRAME_CLIP_RELATION`): a window's frame scores are the pooling's
per-frame class probabilities (the sigmoid `cla` branch) before pooling over time; its clip score
(what `psla tag` reports per window) pools them over all T' frames, padding frames included:

- `model.heads: 0` (mean pooling): the clip score is the plain mean of the frame scores;
- `model.heads: 1` (attention): the clip score is their attention-weighted mean (weights >= 0, summing
  to 1 over the T' frames), so it lies between the window's smallest and largest frame score, but a
  frame the attention ignores is not constrained by training (the loss sees only clip scores) and
  may score high or low without changing the clip score;
- `model.heads >= 2`: each head's clip score is its attention-weighted mean of its own frame scores,
  and the clip score sums the heads with learnable, unconstrained weights; the frame scores mix the
  heads' frame scores with |weight| / sum |weight| (so they stay in [0, 1]), so no bound between the
  two holds in general.

So frame scores are not calibrated like clip scores: a threshold tuned on clip scores does not carry
over to frames, and the file's highest stitched frame score is in general not its highest window
score. The stitched scores are further averages (over overlapping windows), which smooth a frame
score towards its neighbours' windows.

Writers: `frames_csv_header()` / `frames_csv_rows(...)`, the CSV `file,time,mid,display_name,score`
(one row per frame and class, a frame's top-k classes by score).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

FRAME_CLIP_RELATION = (
    "frame scores are the pooling's per-frame class probabilities before pooling over time; a window's clip "
    "score is their mean (heads 0), their attention-weighted mean over all T' frames (heads 1: between the "
    "window's smallest and largest frame score), or a learnably weighted sum of per-head attention means "
    "(heads >= 2: no bound); stitched frame scores are overlap-weighted means over windows"
)
FRAMES_CSV_COLUMNS = ("file", "time", "mid", "display_name", "score")
# Seconds: times that differ by less are the same time (float rounding of k * step and of sample counts).
EPS = 1e-9


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive global frames: `times` `[n]` float64 start seconds, `ends` `[n]` float64 end seconds
    (`times + step`, except a last frame cut at the file's duration), `scores` `[n, classes]` float32."""

    times: np.ndarray
    ends: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.times)

    @staticmethod
    def empty(classes: int) -> FrameChunk:
        return FrameChunk(np.zeros(0), np.zeros(0), np.zeros((0, classes), np.float32))

    @staticmethod
    def concatenate(chunks: Sequence[FrameChunk], classes: int) -> FrameChunk:
        """The chunks one after the other (the whole file's frames from every `add` and the `finish`)."""
        if not chunks:
            return FrameChunk.empty(classes)
        return FrameChunk(
            np.concatenate([c.times for c in chunks]),
            np.concatenate([c.ends for c in chunks]),
            np.concatenate([c.scores for c in chunks]).astype(np.float32, copy=False),
        )


class FrameStitcher:
    """Global frames `[k * step, (k + 1) * step)` of one file from its windows' frames (module docstring).

    `add(start, frames, end)` for each window in increasing start order, then `finish(duration)` once;
    each returns the frames that are final, in time order, and together they are the file's frames
    from 0 to `duration`, each once. A global frame no window reaches (only if the windows leave a gap)
    scores 0."""

    def __init__(self, step: float, classes: int):
        if not (step > 0 and math.isfinite(step)):
            raise ValueError(f"frame step {step} s: must be positive")
        if classes < 1:
            raise ValueError(f"classes {classes}: must be at least 1")
        self.step = float(step)
        self.classes = int(classes)
        self._first = 0  # the global index of the first frame still open
        self._held = 0  # frames open: the first `_held` rows of the buffers below
        self._num = np.zeros((8, self.classes))  # [capacity, classes] overlap-weighted sums of scores
        self._den = np.zeros(8)  # [capacity] overlap seconds
        self._start = -math.inf
        self._done = False

    @property
    def held(self) -> int:
        """Global frames held open (at most about window / step + 2)."""
        return self._held

    def _edge(self, k):
        """The start of global frame k (the end of frame k - 1); one expression everywhere."""
        return k * self.step

    def _frames_ending_by(self, t: float) -> int:
        """How many global frames end at or before t (within EPS)."""
        n = max(0, int(math.floor((t + EPS) / self.step)))
        while n > 0 and self._edge(n) > t + EPS:
            n -= 1
        while self._edge(n + 1) <= t + EPS:
            n += 1
        return n

    def _frames_starting_before(self, t: float) -> int:
        """How many global frames start before t (by more than EPS)."""
        n = max(0, int(math.ceil((t - EPS) / self.step)))
        while n > 0 and self._edge(n - 1) >= t - EPS:
            n -= 1
        while self._edge(n) < t - EPS:
            n += 1
        return n

    def _hold_until(self, stop: int) -> None:
        """Hold global frames up to index `stop` (exclusive); new ones start empty."""
        held = max(self._held, stop - self._first)
        if held > len(self._den):  # grow the buffers (they stay about a window's frames long)
            capacity = max(held, 2 * len(self._den))
            self._num = np.concatenate([self._num, np.zeros((capacity - len(self._den), self.classes))])
            self._den = np.concatenate([self._den, np.zeros(capacity - len(self._den))])
        self._held = held

    def _release(self, stop: int, duration: float | None = None) -> FrameChunk:
        """Global frames `[first, stop)` as a chunk, no longer held."""
        self._hold_until(stop)
        n = max(0, stop - self._first)
        k = np.arange(self._first, self._first + n)
        num, den = self._num[:n], self._den[:n]
        scores = np.divide(num, den[:, None], out=np.zeros_like(num), where=den[:, None] > 0).astype(np.float32)
        times, ends = self._edge(k).astype(np.float64), self._edge(k + 1).astype(np.float64)
        if duration is not None and n:
            ends = np.minimum(ends, duration)
        rest = self._held - n  # the open frames move to the front, the freed rows are emptied
        self._num[:rest], self._den[:rest] = self._num[n : self._held], self._den[n : self._held]
        self._num[rest : self._held], self._den[rest : self._held] = 0.0, 0.0
        self._held, self._first = rest, self._first + n
        return FrameChunk(times, ends, scores)

    def add(self, start: float, frames: np.ndarray, end: float) -> FrameChunk:
        """One window's frames `[T', classes]` (window frame j covers `[start + j * step, start + (j + 1) *
        step)`, cut at `end`, where the window's audio ends); the global frames now final (possibly none)."""
        if self._done:
            raise RuntimeError("FrameStitcher.add after finish")
        frames = np.asarray(frames)
        if frames.ndim != 2 or frames.shape[1] != self.classes or len(frames) == 0:
            raise ValueError(f"window frames: expected [frames >= 1, {self.classes}], got shape {list(frames.shape)}")
        start, end = float(start), float(end)
        if start < self._start - EPS:
            raise ValueError(f"window start {start} s: before the previous window's ({self._start} s)")
        if end < start:
            raise ValueError(f"window end {end} s: before its start ({start} s)")
        self._start = max(self._start, start)
        j = np.arange(len(frames))
        lo = start + j * self.step
        keep = lo < end - EPS  # frames that start at or after the window's end are padding
        if keep.any():
            lo = lo[keep]
            hi = np.minimum(lo + self.step, end)
            hi[-1] = max(hi[-1], end)  # frames short of the end: the last one reaches it
            scores = frames[keep].astype(np.float64)
            # Window frame j starts in global frame base + j (lo_j = start + j * step), so with one grid
            # step it overlaps global frames base + j + d for d in -1..1 (-1, 1: float rounding, or a hop
            # that is not a multiple of step), more only when the last one is stretched: per offset d
            # the global frames are a run of consecutive rows, added as one slice.
            base = int(math.floor(lo[0] / self.step))
            reach = int(math.ceil((hi[-1] - lo[-1]) / self.step)) + 1
            k = base + np.arange(-1, reach + 1)[:, None] + np.arange(len(lo))[None]  # [offsets, frames]
            weight = np.minimum(hi, self._edge(k + 1)) - np.maximum(lo, self._edge(k))
            weight[(weight < 0) | (k < self._first)] = 0.0  # k < first: released frames (a float sliver)
            for d in np.flatnonzero(weight.max(axis=1) > 0).tolist():
                touched = np.flatnonzero(weight[d])
                a, b = int(touched[0]), int(touched[-1]) + 1
                self._hold_until(int(k[d, b - 1]) + 1)
                rows = slice(int(k[d, a]) - self._first, int(k[d, b - 1]) + 1 - self._first)
                self._num[rows] += scores[a:b] * weight[d, a:b, None]
                self._den[rows] += weight[d, a:b]
        return self._release(self._frames_ending_by(start))

    def finish(self, duration: float) -> FrameChunk:
        """The rest of the file's frames, up to `duration` (the last window's end; the last frame is cut there)."""
        if self._done:
            raise RuntimeError("FrameStitcher.finish called twice")
        self._done = True
        duration = float(duration)
        chunk = self._release(self._frames_starting_before(duration), duration)
        self._held = 0  # frames past the duration (a window said to end after it) are dropped
        return chunk


# ----------------------------------------------------------------------------------------------
# writers


def csv_text(rows: Iterable[list], delimiter: str = ",") -> str:
    """Rows as CSV text (the csv module's quoting, `\\n` line ends): every tagging writer's."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def frames_csv_header() -> str:
    """`file,time,mid,display_name,score` and a newline."""
    return csv_text([list(FRAMES_CSV_COLUMNS)])


def frames_csv_rows(
    file: str, chunk: FrameChunk, class_ids: Sequence[str], class_names: Sequence[str], top_k: int = 0
) -> str:
    """CSV rows of `frames_csv_header()`: per frame (in time order) its `top_k` classes by score, highest
    first, ties in class order (0: all classes); `time` is the frame's start in seconds, rounded to 6
    decimals (frames last `step`, the last one to the file's end), `score` rounded to 6 decimals."""
    n, classes = chunk.scores.shape
    if n == 0:
        return ""
    order = np.argsort(-chunk.scores, axis=1, kind="stable")
    if 0 < top_k < classes:
        order = order[:, :top_k]
    picked = np.take_along_axis(chunk.scores, order, axis=1)
    rows = []
    for f in range(n):
        time = round(float(chunk.times[f]), 6)
        for c, score in zip(order[f].tolist(), picked[f].tolist()):
            rows.append([file, time, class_ids[c], class_names[c], round(score, 6)])
    return csv_text(rows)

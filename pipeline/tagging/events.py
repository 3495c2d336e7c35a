"""Sound events from frame scores: per class, runs of frames scoring at or above a threshold.

A frame is active for a class when its score is >= the class's threshold (a NaN score is not). Each run
of consecutive active frames is an event from the first frame's start to the last frame's end. Then,
per class, events separated by a gap of at most `max_gap` seconds are merged into one (gap filling),
and events shorter than `min_duration` seconds after merging are dropped. An event's `score` is the
highest frame score inside it (the frames of filled gaps are below the threshold, so it is the highest
of its active frames).

Defaults (`MIN_DURATION`, `MAX_GAP`), in seconds: frames last 0.32 s (the paper's AudioSet model) to
0.6 s (the demo), so gaps and events are whole frames of that length (but a last frame cut at the
file's end), and the events worth reporting last 0.5 s or more:

- `MIN_DURATION = 0.5`: nothing shorter than the shortest real event; at 0.6 s frames one active frame
  is enough, at 0.32 s frames it takes two (0.64 s), so a single 0.32 s blip is dropped. Neither
  boundary sits on a whole number of frames of either step, so float rounding cannot flip it.
- `MAX_GAP = 0.7`: a gap of one frame at 0.6 s and of one or two frames at 0.32 s (0.32, 0.64 s) is
  filled, a gap of 1.2 s (two 0.6 s frames) or 0.96 s (three 0.32 s frames) is not: a dip of a frame
  or two is too short to be a real silence at this time resolution (the window averaging blurs it
  further), a second of silence is one.

`EventDetector` works on a stream of `FrameChunk`s (consecutive frames of one file, as
`FrameStitcher` gives them): `add` returns the events that are closed and final, `finish` the rest, and
over any chunking the events are the same as on the whole file at once. Events come out sorted by
onset, then class index, across all the calls together; so an event is held back while an earlier
one (of any class) is still open, and what is held is the events, not the frames.

Writers (strings; every line ends in a newline):

- `events_csv_header()` / `events_csv_rows(file, events, class_ids, class_names)`: CSV
  `file,onset,offset,mid,label,score`, label the class's display name, onset and offset in seconds
  rounded to 3 decimals, score to 6; quoted as the csv module quotes (a label with a comma is quoted).
- `audacity_labels(events, class_names)`: an Audacity label track (File > Import > Labels), one
  `onset<TAB>offset<TAB>label` line per event, seconds with 6 decimals as Audacity exports them, no
  header; the format has no quoting, so a tab or line break in a label becomes a space.
- `dcase_header()` / `dcase_rows(filename, events, class_names)`: the DCASE (challenge task 4, DESED)
  tab-separated `filename<TAB>onset<TAB>offset<TAB>event_label`, as its ground truth and its systems'
  predictions are written and as sed_eval / sed_scores_eval read them: `filename` is the audio file's
  base name with its extension (the DESED files' `Y..._30.000_40.000.wav`; any folder is dropped),
  onset and offset in seconds with 3 decimals, `event_label` the class's display name as it is
  (spaces and commas kept; a label with a tab or a quote is quoted as the csv module does). A file
  without events has no rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from pipeline.tagging.frames import EPS, FrameChunk, csv_text

MIN_DURATION = 0.5  # seconds: shorter events (after gap filling) are dropped
MAX_GAP = 0.7  # seconds: events of one class at most this far apart are merged
EVENTS_CSV_COLUMNS = ("file", "onset", "offset", "mid", "label", "score")
DCASE_COLUMNS = ("filename", "onset", "offset", "event_label")


@dataclass(frozen=True)
class Event:
    """One sound event: `onset` and `offset` in seconds from the file's start, the class's index, and
    `score`, the highest frame score inside the event."""

    onset: float
    offset: float
    class_index: int
    score: float

    @property
    def duration(self) -> float:
        return self.offset - self.onset


def _key(event: Event) -> tuple[float, int]:
    return event.onset, event.class_index


class EventDetector:
    """Events of one file from its frames, chunk by chunk (module docstring).

    `thresholds`: one per class (a single number: the same for every class). `min_duration`,
    `max_gap`: seconds (>= 0). Events of the whole stream come out sorted by onset, then class index."""

    def __init__(self, thresholds, min_duration: float = MIN_DURATION, max_gap: float = MAX_GAP):
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.ndim > 1:
            raise ValueError(f"thresholds: expected one per class, got shape {list(thresholds.shape)}")
        if not min_duration >= 0 or not max_gap >= 0:
            raise ValueError(f"min_duration {min_duration} s, max_gap {max_gap} s: must be 0 or more")
        self.thresholds = thresholds
        self.min_duration = float(min_duration)
        self.max_gap = float(max_gap)
        self._classes: int | None = None if thresholds.ndim == 0 else len(thresholds)
        self._done = False
        self._last_end: float | None = None
        self._ready: list[Event] = []
        self._pending: dict[int, list] = {}  # class -> [onset, offset, max]: closed, may still merge
        if self._classes is not None:
            self._setup(self._classes)

    def _setup(self, classes: int) -> None:
        self._classes = classes
        self._thr = np.broadcast_to(self.thresholds, (classes,)).astype(np.float64)
        self._active = np.zeros(classes, bool)  # was the last frame seen active
        self._onset = np.full(classes, np.nan)  # the open event's onset (gap-filled onsets included)
        self._max = np.full(classes, -np.inf)  # the open event's highest score so far

    def _finalize(self, c: int, onset: float, offset: float, score: float) -> None:
        if offset - onset >= self.min_duration - EPS:
            self._ready.append(Event(float(onset), float(offset), int(c), float(score)))

    def _begin(self, c: int, onset: float) -> None:
        pending = self._pending.pop(c, None)
        if pending is not None and onset - pending[1] <= self.max_gap + EPS:
            self._onset[c], self._max[c] = pending[0], pending[2]  # the gap is filled
            return
        if pending is not None:
            self._finalize(c, *pending)
        self._onset[c], self._max[c] = onset, -np.inf

    def _emit(self, final: bool) -> list[Event]:
        ready = sorted(self._ready, key=_key)
        if final:
            self._ready = []
            return ready
        # A later event may start where the frames seen end, or earlier while one is open or pending.
        hold = (self._last_end, -1)
        open_classes = np.flatnonzero(self._active)
        if len(open_classes):
            c = int(open_classes[np.argmin(self._onset[open_classes])])  # ties: the lowest class
            hold = min(hold, (float(self._onset[c]), c))
        for c, pending in self._pending.items():
            hold = min(hold, (pending[0], c))
        cut = next((i for i, e in enumerate(ready) if _key(e) >= hold), len(ready))
        self._ready = ready[cut:]
        return ready[:cut]

    def add(self, chunk: FrameChunk) -> list[Event]:
        """The next frames of the file (right after the previous chunk's); the events now final."""
        if self._done:
            raise RuntimeError("EventDetector.add after finish")
        scores = np.asarray(chunk.scores)
        if scores.ndim != 2:
            raise ValueError(f"frame scores: expected [frames, classes], got shape {list(scores.shape)}")
        if self._classes is None:
            self._setup(scores.shape[1])
        if scores.shape[1] != self._classes:
            raise ValueError(f"frame scores: {scores.shape[1]} classes, expected {self._classes}")
        n = len(scores)
        if n == 0:
            return []
        times, ends = np.asarray(chunk.times, np.float64), np.asarray(chunk.ends, np.float64)
        if self._last_end is not None and times[0] < self._last_end - EPS:
            raise ValueError(f"frames at {times[0]} s: before the previous chunk's end ({self._last_end} s)")
        active = scores >= self._thr  # NaN: not active
        change = np.diff(np.concatenate([self._active[None], active]).astype(np.int8), axis=0)  # [n, classes]
        start = np.zeros(self._classes, np.int64)  # where each open run starts in this chunk (0: carried over)
        classes, frames = np.nonzero(change.T)  # by class, then time
        for c, i in zip(classes.tolist(), frames.tolist()):
            if change[i, c] > 0:
                self._begin(c, float(times[i]))
                start[c] = i
            else:
                score = float(self._max[c])
                if i > start[c]:
                    score = max(score, float(scores[start[c] : i, c].max()))
                offset = float(ends[i - 1]) if i > 0 else self._last_end
                self._pending[c] = [float(self._onset[c]), offset, score]
                self._onset[c], self._max[c] = np.nan, -np.inf
        still = np.flatnonzero(active[-1])
        if len(still):  # open at the chunk's end: the highest score from where each run starts in it
            suffix_max = np.maximum.accumulate(scores[::-1], axis=0)[::-1]
            self._max[still] = np.maximum(self._max[still], suffix_max[start[still], still])
        self._active = active[-1].copy()
        self._last_end = float(ends[-1])
        for c in [c for c, p in self._pending.items() if self._last_end - p[1] > self.max_gap + EPS]:
            self._finalize(c, *self._pending.pop(c))  # no later frame is near enough to fill the gap
        return self._emit(final=False)

    def finish(self) -> list[Event]:
        """The events still open or held, closed at the end of the last frame."""
        if self._done:
            raise RuntimeError("EventDetector.finish called twice")
        self._done = True
        if self._classes is not None:
            for c in np.flatnonzero(self._active).tolist():
                self._finalize(c, float(self._onset[c]), self._last_end, float(self._max[c]))
            self._active[:] = False
        for c, pending in self._pending.items():
            self._finalize(c, *pending)
        self._pending.clear()
        return self._emit(final=True)


def detect_events(
    chunk: FrameChunk, thresholds, min_duration: float = MIN_DURATION, max_gap: float = MAX_GAP
) -> list[Event]:
    """The events of a whole file's frames at once."""
    detector = EventDetector(thresholds, min_duration, max_gap)
    return detector.add(chunk) + detector.finish()


# ----------------------------------------------------------------------------------------------
# writers


def events_csv_header() -> str:
    """`file,onset,offset,mid,label,score` and a newline."""
    return csv_text([list(EVENTS_CSV_COLUMNS)])


def events_csv_rows(file: str, events: Sequence[Event], class_ids: Sequence[str], class_names: Sequence[str]) -> str:
    """CSV rows of `events_csv_header()`, one per event in the given order."""
    return csv_text(
        [
            file,
            round(e.onset, 3),
            round(e.offset, 3),
            class_ids[e.class_index],
            class_names[e.class_index],
            round(e.score, 6),
        ]
        for e in events
    )


def _plain(label: str) -> str:
    return " ".join(label.replace("\t", " ").splitlines()) if label else label


def audacity_labels(events: Sequence[Event], class_names: Sequence[str]) -> str:
    """An Audacity label track: `onset<TAB>offset<TAB>label` per event, seconds with 6 decimals."""
    return "".join(f"{e.onset:.6f}\t{e.offset:.6f}\t{_plain(class_names[e.class_index])}\n" for e in events)


def dcase_header() -> str:
    """`filename<TAB>onset<TAB>offset<TAB>event_label` and a newline."""
    return csv_text([list(DCASE_COLUMNS)], delimiter="\t")


def dcase_rows(filename: str, events: Sequence[Event], class_names: Sequence[str]) -> str:
    """DCASE rows of `dcase_header()`: the file's base name, onset and offset with 3 decimals, the label."""
    name = PurePath(filename).name
    return csv_text(
        ([name, f"{e.onset:.3f}", f"{e.offset:.3f}", class_names[e.class_index]] for e in events), delimiter="\t"
    )

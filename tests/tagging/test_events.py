"""EventDetector against a brute-force whole-array reference, streaming equal to batch, edge cases, writers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tagging.events import (
    MAX_GAP,
    MIN_DURATION,
    Event,
    EventDetector,
    audacity_labels,
    dcase_header,
    dcase_rows,
    detect_events,
    events_csv_header,
    events_csv_rows,
)
from pipeline.tagging.frames import FrameChunk


def frames(scores, step: float, duration: float | None = None) -> FrameChunk:
    scores = np.asarray(scores, np.float32)
    if scores.ndim == 1:
        scores = scores[:, None]
    k = np.arange(len(scores))
    ends = (k + 1) * step
    if duration is not None:
        ends = np.minimum(ends, duration)
    return FrameChunk(k * step, ends, scores)


def reference(chunk: FrameChunk, thresholds, min_duration, max_gap) -> list[Event]:
    """Per class, frame by frame: runs of active frames, merged across short gaps, short ones dropped."""
    events = []
    for c in range(chunk.scores.shape[1]):
        runs = []  # [onset, offset, max]
        inside = False
        for f in range(len(chunk)):
            s = float(chunk.scores[f, c])
            if s >= thresholds[c]:
                if not inside:
                    runs.append([float(chunk.times[f]), float(chunk.ends[f]), s])
                runs[-1][1], runs[-1][2] = float(chunk.ends[f]), max(runs[-1][2], s)
                inside = True
            else:
                inside = False
        merged = []
        for run in runs:
            if merged and run[0] - merged[-1][1] <= max_gap + 1e-9:
                merged[-1] = [merged[-1][0], run[1], max(merged[-1][2], run[2])]
            else:
                merged.append(run)
        events += [Event(a, b, c, s) for a, b, s in merged if b - a >= min_duration - 1e-9]
    return sorted(events, key=lambda e: (e.onset, e.class_index))


def split(chunk: FrameChunk, cuts) -> list[FrameChunk]:
    bounds = [0, *sorted(cuts), len(chunk)]
    return [FrameChunk(chunk.times[a:b], chunk.ends[a:b], chunk.scores[a:b]) for a, b in zip(bounds, bounds[1:])]


def stream(chunks, thresholds, min_duration, max_gap) -> list[Event]:
    detector = EventDetector(thresholds, min_duration, max_gap)
    out = []
    for chunk in chunks:
        out += detector.add(chunk)
    return out + detector.finish()


def test_events_match_the_reference_and_streaming_equals_batch_for_any_chunking():
    rng = np.random.default_rng(0)
    for trial in range(60):
        classes = int(rng.integers(1, 6))
        n = int(rng.integers(1, 120))
        step = float(rng.choice([0.32, 0.6, 0.1, 0.25]))
        duration = (n - 1) * step + step * float(rng.choice([1.0, 0.3, 0.75]))  # last frame maybe cut
        # smooth-ish scores, so runs and gaps of several lengths occur
        raw = rng.random((n, classes))
        scores = np.clip(raw + np.roll(raw, 1, axis=0) - 0.5, 0, 1) if trial % 2 else raw
        chunk = frames(scores, step, duration)
        thresholds = rng.uniform(0.3, 0.7, classes)
        min_duration = float(rng.choice([0.0, MIN_DURATION, 2 * step, 1.0]))
        max_gap = float(rng.choice([0.0, MAX_GAP, step, 2 * step]))
        expected = reference(chunk, thresholds, min_duration, max_gap)
        assert detect_events(chunk, thresholds, min_duration, max_gap) == expected
        for _ in range(5):
            cuts = rng.integers(0, n + 1, size=int(rng.integers(0, 12)))  # empty chunks included
            assert stream(split(chunk, cuts), thresholds, min_duration, max_gap) == expected
        assert stream(split(chunk, range(1, n)), thresholds, min_duration, max_gap) == expected  # frame by frame


def test_events_come_out_sorted_by_onset_then_class_and_stream_before_the_end():
    # class 1 from 0 s to 4 s (open while class 0's short events close), class 0 at 1 s and at 6 s
    a = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    b = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    chunk = frames(np.stack([a, b], axis=1), 0.5)
    detector = EventDetector(np.array([0.5, 0.5]), min_duration=0.5, max_gap=0.5)
    seen = [detector.add(piece) for piece in split(chunk, range(1, 20))]
    # class 0's event at 1 s waits for class 1's (onset 0 s), which closes at 4 s and is final once the
    # gap can no longer be filled (4.5 s seen)
    when = [i for i, out in enumerate(seen) if out]
    assert when and when[0] == 9 and seen[9] == [Event(0.0, 4.0, 1, 1.0), Event(1.0, 1.5, 0, 1.0)]
    assert [e for out in seen for e in out] + detector.finish() == [
        Event(0.0, 4.0, 1, 1.0),
        Event(1.0, 1.5, 0, 1.0),
        Event(6.0, 7.0, 0, 1.0),
    ]


def test_same_onset_events_are_ordered_by_class():
    chunk = frames(np.array([[1, 1, 1], [1, 1, 0], [0, 1, 0]]), 1.0)
    events = detect_events(chunk, np.full(3, 0.5), 0.0, 0.0)
    assert [(e.onset, e.class_index) for e in events] == [(0.0, 0), (0.0, 1), (0.0, 2)]


@pytest.mark.parametrize("step", [0.1, 0.32, 0.25])
def test_a_gap_of_exactly_max_gap_is_filled_and_a_longer_one_is_not(step):
    scores = [1, 1, 0, 0, 1, 0, 0, 0, 1]  # gaps of 2 and 3 frames
    chunk = frames(scores, step)
    events = detect_events(chunk, [0.5], min_duration=0.0, max_gap=2 * step)
    assert [(e.onset, e.offset) for e in events] == [
        (0.0, pytest.approx(5 * step)),
        (pytest.approx(8 * step), 9 * step),
    ]
    assert len(detect_events(chunk, [0.5], min_duration=0.0, max_gap=2 * step * 0.99)) == 3
    assert len(detect_events(chunk, [0.5], min_duration=0.0, max_gap=3 * step)) == 1


@pytest.mark.parametrize("step", [0.1, 0.32, 0.6])
def test_an_event_of_exactly_min_duration_is_kept_and_a_shorter_one_is_dropped(step):
    scores = [1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1]  # 3 frames, 2 frames, 1 frame
    chunk = frames(scores, step)
    kept = detect_events(chunk, [0.5], min_duration=2 * step, max_gap=0.0)
    assert [round(e.duration / step) for e in kept] == [3, 2]
    assert [round(e.duration / step) for e in detect_events(chunk, [0.5], 3 * step, 0.0)] == [3]
    # the minimum applies after gap filling: 1 + gap + 1 frames make one event of 3 frames
    merged = detect_events(frames([1, 0, 1, 0, 0, 0], step), [0.5], min_duration=3 * step, max_gap=step)
    assert len(merged) == 1 and merged[0].offset == pytest.approx(3 * step)


def test_defaults_at_the_frame_steps():
    # 0.6 s frames: one frame is an event, one-frame gaps are filled, two-frame gaps are not
    at_06 = detect_events(frames([1, 0, 1, 0, 0, 1], 0.6), [0.5])
    assert [(e.onset, round(e.offset, 6)) for e in at_06] == [(0.0, 1.8), (3.0, 3.6)]
    # 0.32 s frames: one frame alone is too short, two-frame gaps are filled, three are not
    at_032 = detect_events(frames([1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1], 0.32), [0.5])
    assert [(round(e.onset, 6), round(e.offset, 6)) for e in at_032] == [(0.0, 1.28), (3.84, 4.48)]


def test_score_is_the_highest_frame_score_and_nan_is_inactive():
    chunk = frames([0.6, 0.9, 0.2, 0.7, np.nan, 0.8], 0.5)
    events = detect_events(chunk, [0.5], min_duration=0.0, max_gap=0.5)
    assert events == [Event(0.0, 3.0, 0, pytest.approx(0.9))]
    assert detect_events(chunk, [0.5], min_duration=0.0, max_gap=0.0)[-1].onset == 2.5


def test_a_scalar_threshold_and_bad_inputs():
    chunk = frames(np.array([[0.7, 0.2], [0.7, 0.9]]), 0.5)
    assert detect_events(chunk, 0.5, 0.0, 0.0) == [
        Event(0.0, 1.0, 0, pytest.approx(0.7)),
        Event(0.5, 1.0, 1, pytest.approx(0.9)),
    ]
    with pytest.raises(ValueError):
        EventDetector([0.5], min_duration=-1.0)
    detector = EventDetector([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="classes"):
        detector.add(chunk)
    detector = EventDetector([0.5, 0.5])
    detector.add(chunk)
    with pytest.raises(ValueError, match="before"):
        detector.add(chunk)


EVENTS = [Event(0.0, 1.23456, 0, 0.9876543), Event(0.5, 2.0, 1, 0.5)]
IDS, NAMES = ["/m/dog", "/m/speech"], ["Dog", "Male speech, man speaking"]


def test_events_csv():
    assert events_csv_header() == "file,onset,offset,mid,label,score\n"
    assert events_csv_rows("a/b.wav", EVENTS, IDS, NAMES) == (
        'a/b.wav,0.0,1.235,/m/dog,Dog,0.987654\na/b.wav,0.5,2.0,/m/speech,"Male speech, man speaking",0.5\n'
    )
    assert events_csv_rows("a/b.wav", [], IDS, NAMES) == ""


def test_audacity_labels():
    assert audacity_labels(EVENTS, NAMES) == (
        "0.000000\t1.234560\tDog\n0.500000\t2.000000\tMale speech, man speaking\n"
    )
    assert audacity_labels([Event(1.0, 2.0, 0, 1.0)], ["a\tb\nc"]) == "1.000000\t2.000000\ta b c\n"


def test_dcase_tsv():
    assert dcase_header() == "filename\tonset\toffset\tevent_label\n"
    assert dcase_rows("/data/clips/Y0a_30.000_40.000.wav", EVENTS, NAMES) == (
        "Y0a_30.000_40.000.wav\t0.000\t1.235\tDog\nY0a_30.000_40.000.wav\t0.500\t2.000\tMale speech, man speaking\n"
    )
    assert dcase_rows("x.wav", [Event(0.0, 1.0, 0, 1.0)], ["tab\there"]) == 'x.wav\t0.000\t1.000\t"tab\there"\n'

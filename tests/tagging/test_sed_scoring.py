"""benchmarks.events: the long test recordings' ground truth is where their sound is, they are the same
from the same seed, and the sed_eval scoring gives 1.0 for a perfect prediction and less for a shifted one."""

import numpy as np
import pytest

from benchmarks.events import (
    LABEL_GAP,
    MAX_OVERLAP,
    SAMPLE_RATE,
    _dicts,
    recording_specs,
    reference_events,
    score,
    synthesize_recording,
)
from pipeline.data.demo import _ancestors, class_table
from pipeline.tagging.events import Event

NAMES = [row["display_name"] for row in class_table()]
MIDS = [row["mid"] for row in class_table()]
SECONDS = 12.0


@pytest.fixture(scope="module")
def recordings():
    return recording_specs(3, SECONDS, seed=5)


def test_events_are_where_the_audio_is_loud(recordings):
    for recording in recordings:
        wave = synthesize_recording(recording, seed=5).astype(np.float64)
        assert wave.shape == (int(SECONDS * SAMPLE_RATE),) and np.abs(wave).max() <= 0.99
        inside = np.zeros(len(wave), bool)
        spans = [(int(on * SAMPLE_RATE), int((on + dur) * SAMPLE_RATE)) for _mid, on, dur, *_ in recording.spec.events]
        for a, b in spans:
            inside[a:b] = True
        assert spans and (~inside).sum() > SAMPLE_RATE  # events, and a second or more of background only
        quiet = np.sqrt(np.mean(wave[~inside] ** 2))
        for a, b in spans:  # every event at least 10 dB above the background (gains -10..10 dB, background -30)
            assert np.sqrt(np.mean(wave[a:b] ** 2)) > 3 * quiet


def test_ground_truth_lists_each_event_and_its_ancestors(recordings):
    for recording in recordings:
        truth = {(e.onset, e.offset, MIDS[e.class_index]) for e in reference_events(recording)}
        expected = {
            (on, round(on + dur, 3), m) for mid, on, dur, *_ in recording.spec.events for m in [mid, *_ancestors(mid)]
        }
        assert truth == expected
        assert all(0 <= on < off <= SECONDS for on, off, _ in truth)


def test_placement_rules_hold():
    for recording in recording_specs(10, 60.0, seed=1):
        events = [(mid, on, on + dur) for mid, on, dur, *_ in recording.spec.events]
        assert len(events) >= 8  # about one per 5 s
        for i, (mid, on, off) in enumerate(events):
            for other, o_on, o_off in events[i + 1 :]:
                if {mid, *_ancestors(mid)} & {other, *_ancestors(other)}:  # a shared label: well apart
                    assert o_on >= off + LABEL_GAP or on >= o_off + LABEL_GAP
            assert 1.0 <= off - on <= 4.0
        for t in np.arange(0, 60, 0.05):
            assert sum(on <= t < off for _, on, off in events) <= MAX_OVERLAP
        assert any(b[1] < a[2] for a, b in zip(events, events[1:], strict=False))  # some overlap somewhere


def test_deterministic_from_the_seed(recordings):
    assert recording_specs(3, SECONDS, seed=5) == recordings
    assert recording_specs(3, SECONDS, seed=6) != recordings
    first = recordings[0]
    assert np.array_equal(synthesize_recording(first, 5), synthesize_recording(first, 5))


def _reference(recordings, shift=0.0):
    """The ground truth as sed_eval reads it, every event moved by `shift` seconds (cut at the end)."""
    truth = reference_events
    moved = {
        r.filename: [Event(e.onset + shift, min(e.offset + shift, SECONDS), e.class_index, 1) for e in truth(r)]
        for r in recordings
    }
    return {f: _dicts(f, events, NAMES) for f, events in moved.items()}


def test_scoring_perfect_shifted_and_whole_recording(recordings):
    durations = {r.filename: SECONDS for r in recordings}
    reference = _reference(recordings)
    perfect = score(reference, reference, NAMES, durations)
    assert perfect["segment"]["f1"] == 1.0 and perfect["segment"]["error_rate"] == 0.0
    assert all(v["f1"] == 1.0 and v["error_rate"] == 0.0 for v in perfect["event"].values())
    assert set(perfect["event"]) == {"1", "2"}

    shifted = score(reference, _reference(recordings, shift=1.5), NAMES, durations)
    assert shifted["segment"]["f1"] < 1.0 and shifted["segment"]["error_rate"] > 0.0
    assert shifted["event"]["1"]["f1"] == 0.0  # every onset 1.5 s off: outside the 1 s collar
    assert 0.0 < shifted["event"]["2"]["f1"]  # inside the 2 s one, where the offset also matches

    whole = {
        r.filename: [
            {"filename": r.filename, "event_label": label, "onset": 0.0, "offset": SECONDS}
            for label in {d["event_label"] for d in reference[r.filename]}
        ]
        for r in recordings
    }
    baseline = score(reference, whole, NAMES, durations)
    assert baseline["segment"]["recall"] == 1.0 and baseline["segment"]["precision"] < 1.0
    assert all(v["f1"] < perfect["event"]["1"]["f1"] for v in baseline["event"].values())

"""FrameStitcher against a brute-force reference on a fine time grid, its flat memory, the frames CSV."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.tagging.frames import FrameChunk, FrameStitcher, frames_csv_header, frames_csv_rows

FINE = 4  # reference grid points per time unit (all boundaries are whole units, points sit between them)


def plan(duration: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Window bounds as `pipeline.tagging.tag.plan_windows` lays them out, in whole units."""
    count = 1 if duration <= window else 1 + -(-(duration - window) // hop)
    return [(i * hop, min(i * hop + window, duration)) for i in range(count)]


def reference(duration, window, hop, step, n_frames, window_scores):
    """Global frame scores by brute force: on a fine grid, every window frame covering each point (cut at
    the window's end, the last one stretched to it), averaged over the points of each global frame."""
    classes = window_scores[0].shape[1]
    points = (np.arange(duration * FINE) + 0.5) / FINE  # in units
    total, count = np.zeros((len(points), classes)), np.zeros(len(points))
    for (start, end), scores in zip(plan(duration, window, hop), window_scores):
        for j in range(n_frames):
            lo, hi = start + j * step, min(start + (j + 1) * step, end)
            if lo >= end:
                break
            if j == n_frames - 1:
                hi = end
            inside = (points >= lo) & (points < hi)
            total[inside] += scores[j]
            count[inside] += 1
    n_global = -(-duration // step)
    expected = np.zeros((n_global, classes))
    for k in range(n_global):
        inside = (points >= k * step) & (points < (k + 1) * step)
        expected[k] = total[inside].sum(axis=0) / count[inside].sum()
    return expected


def stitch(duration, window, hop, step, n_frames, window_scores, unit):
    stitcher = FrameStitcher(step * unit, window_scores[0].shape[1])
    chunks = []
    for (start, end), scores in zip(plan(duration, window, hop), window_scores):
        chunks.append(stitcher.add(start * unit, scores, end * unit))
        assert stitcher.held <= math.ceil(window / step) + 3
    chunks.append(stitcher.finish(duration * unit))
    return chunks


def check_case(rng, duration, window, hop, step, n_frames, classes=3, unit=0.05):
    window_scores = [rng.random((n_frames, classes)).astype(np.float32) for _ in plan(duration, window, hop)]
    chunks = stitch(duration, window, hop, step, n_frames, window_scores, unit)
    whole = FrameChunk.concatenate(chunks, classes)
    expected = reference(duration, window, hop, step, n_frames, window_scores)
    n = len(expected)
    assert whole.scores.shape == (n, classes) and whole.scores.dtype == np.float32
    np.testing.assert_allclose(whole.scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole.times, np.arange(n) * step * unit, atol=1e-9)
    ends = np.minimum((np.arange(n) + 1) * step, duration) * unit
    np.testing.assert_allclose(whole.ends, ends, atol=1e-9)
    assert whole.ends[-1] == pytest.approx(duration * unit)
    return chunks


def test_stitching_matches_the_brute_force_reference_on_random_layouts():
    rng = np.random.default_rng(0)
    for _ in range(150):
        step = int(rng.integers(1, 9))
        window = int(rng.integers(1, 30))
        hop = int(rng.integers(1, window + 1))
        duration = int(rng.integers(1, 120))
        frames_needed = -(-window // step)
        # mostly enough frames to cover a window (the zero padding of a short one dropped), sometimes one
        # short of it (a long window's fbank stops early: the last frame is stretched to the end)
        n_frames = max(1, frames_needed + int(rng.choice([-1, 0, 0, 1, 2])))
        check_case(rng, duration, window, hop, step, n_frames, unit=float(rng.choice([0.05, 0.1, 0.02])))


@pytest.mark.parametrize(
    "duration, window, hop, step, n_frames",
    [
        (137, 30, 15, 6, 5),  # the demo in 0.1 s units: 3 s windows, 1.5 s hop, 0.6 s frames; 13.7 s file
        (100, 30, 30, 6, 5),  # hop == window
        (90, 30, 30, 6, 5),  # hop == window, the file a whole number of windows
        (17, 30, 15, 6, 5),  # a file shorter than one window: one window, its padding frames dropped
        (43, 30, 15, 6, 5),  # the last window cut short, the last frame cut at the end
        (200, 100, 50, 32, 3),  # windows longer than the frames reach (3 x 32 = 96): stretched
        (50, 20, 7, 4, 5),  # hop 7 not a multiple of step 4
        (1203, 500, 250, 16, 33),  # the paper's AudioSet model in 0.02 s units: 0.32 s frames, 10 s windows
    ],
)
def test_stitching_edge_layouts(duration, window, hop, step, n_frames):
    check_case(np.random.default_rng(duration), duration, window, hop, step, n_frames, unit=0.1)


def test_window_bounds_off_any_grid_match_interval_arithmetic():
    """Starts and ends as sample counts give them (not multiples of anything), against overlaps computed
    interval by interval."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        step, window, rate = float(rng.uniform(0.2, 0.7)), float(rng.uniform(0.5, 4.0)), 16000
        hop_samples, window_samples = int(rng.integers(1000, int(window * rate) + 1)), int(window * rate)
        n_samples = int(rng.integers(100, 20 * rate))
        bounds = plan(n_samples, window_samples, hop_samples)
        n_frames = math.ceil(window / step)
        scores = [rng.random((n_frames, 2)) for _ in bounds]
        stitcher = FrameStitcher(step, 2)
        chunks = [stitcher.add(a / rate, w, b / rate) for (a, b), w in zip(bounds, scores)]
        whole = FrameChunk.concatenate([*chunks, stitcher.finish(n_samples / rate)], 2)
        duration = n_samples / rate
        assert len(whole) == math.ceil(duration / step - 1e-9)
        for k in range(len(whole)):
            lo_k, hi_k = k * step, min((k + 1) * step, duration)
            total, weight = np.zeros(2), 0.0
            for (a, b), w in zip(bounds, scores):
                for j in range(n_frames):
                    lo, hi = a / rate + j * step, min(a / rate + (j + 1) * step, b / rate)
                    overlap = min(hi, hi_k) - max(lo, lo_k)
                    if lo < b / rate and overlap > 0:
                        total, weight = total + overlap * w[j], weight + overlap
            np.testing.assert_allclose(whole.scores[k], total / weight, rtol=1e-5)


def test_a_single_window_frame_aligned_is_passed_through():
    stitcher = FrameStitcher(0.6, 2)
    frames = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5]], np.float32)
    assert len(stitcher.add(0.0, frames, 2.0)) == 0
    out = stitcher.finish(2.0)
    np.testing.assert_allclose(out.scores, frames[:4])  # the fifth starts at 2.4 s, after the end
    np.testing.assert_allclose(out.times, [0.0, 0.6, 1.2, 1.8])
    np.testing.assert_allclose(out.ends, [0.6, 1.2, 1.8, 2.0])


def test_two_windows_are_averaged_by_overlap():
    # step 1, windows [0, 2) and [0.5, 2.5): global frame 1 = [1, 2) gets window 0 frame 1 for 1 s,
    # window 1 frame 0 ([0.5, 1.5)) for 0.5 s and frame 1 ([1.5, 2.5)) for 0.5 s
    stitcher = FrameStitcher(1.0, 1)
    first = stitcher.add(0.0, np.array([[0.0], [1.0]]), 2.0)
    assert len(first) == 0
    assert len(stitcher.add(0.5, np.array([[0.2], [0.6]]), 2.5)) == 0  # frame 0 ends at 1 s, after 0.5 s
    third = stitcher.add(1.0, np.array([[0.5], [0.5]]), 2.5)
    np.testing.assert_allclose(third.scores, [[(0.0 * 1 + 0.2 * 0.5) / 1.5]], rtol=1e-6)  # frame 0 is final
    rest = stitcher.finish(2.5)
    np.testing.assert_allclose(rest.times, [1.0, 2.0])
    np.testing.assert_allclose(rest.ends, [2.0, 2.5])
    np.testing.assert_allclose(rest.scores, [[(1.0 + 0.1 + 0.3 + 0.5) / 3.0], [(0.3 + 0.25) / 1.0]], rtol=1e-6)


def test_frames_are_released_as_soon_as_final_and_memory_stays_flat():
    classes, step, window, hop = 4, 0.6, 3.0, 1.5
    stitcher = FrameStitcher(step, classes)
    frames = np.full((5, classes), 0.5, np.float32)
    n_windows = 10_000
    duration = (n_windows - 1) * hop + window
    released, most_held = 0, 0
    for w in range(n_windows):
        start = w * hop
        out = stitcher.add(start, frames, min(start + window, duration))
        released += len(out)
        if len(out):
            assert out.ends[-1] <= start + 1e-9  # only frames no later window reaches
            assert released >= math.floor(start / step + 1e-9) - 1  # and all of them
        most_held = max(most_held, stitcher.held)
    assert most_held <= math.ceil(window / step) + 2
    released += len(stitcher.finish(duration))
    assert released == math.ceil(duration / step - 1e-9)


def test_inputs_are_checked():
    stitcher = FrameStitcher(0.5, 2)
    with pytest.raises(ValueError, match="expected"):
        stitcher.add(0.0, np.zeros((3, 3)), 1.0)
    stitcher.add(1.0, np.zeros((3, 2)), 2.0)
    with pytest.raises(ValueError, match="before the previous"):
        stitcher.add(0.5, np.zeros((3, 2)), 2.0)
    stitcher.finish(2.0)
    with pytest.raises(RuntimeError):
        stitcher.add(2.0, np.zeros((3, 2)), 3.0)
    with pytest.raises(ValueError):
        FrameStitcher(0.0, 2)


def test_frames_csv():
    chunk = FrameChunk(
        np.array([0.0, 0.6]),
        np.array([0.6, 1.0]),
        np.array([[0.25, 0.5, 0.25], [0.1, 0.2, 0.3000004]], np.float32),
    )
    ids, names = ["/m/a", "/m/b", "/m/c"], ["Dog", "Speech, man", "Cat"]
    assert frames_csv_header() == "file,time,mid,display_name,score\n"
    assert frames_csv_rows("x.wav", chunk, ids, names, top_k=2) == (
        'x.wav,0.0,/m/b,"Speech, man",0.5\n'
        "x.wav,0.0,/m/a,Dog,0.25\n"
        "x.wav,0.6,/m/c,Cat,0.3\n"
        'x.wav,0.6,/m/b,"Speech, man",0.2\n'
    )
    assert frames_csv_rows("x.wav", chunk, ids, names, top_k=0).count("\n") == 6
    assert frames_csv_rows("x.wav", FrameChunk.empty(3), ids, names) == ""

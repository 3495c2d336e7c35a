"""pipeline.tagging.fbanks: a batch of windows' fbanks in one call, bit for bit the per-window fbank in float16."""

import numpy as np
import pytest
import torch

from pipeline.data.audio import AudioProblem
from pipeline.features.features import KALDI_OPTIONS, fbank_from_options
from pipeline.tagging.fbanks import ALONE_BELOW, fbanks, frame_geometry, frame_local, per_window

RATE = 16000
# the demo's features (params.yaml: 64 mel bins, 20 ms shift) and the paper's (128 mel bins, 10 ms shift)
BASE = {**KALDI_OPTIONS, "sample_frequency": RATE, "frame_length": 25.0}
OPTIONS = {
    "demo": {**BASE, "num_mel_bins": 64, "frame_shift": 20.0},
    "paper": {**BASE, "num_mel_bins": 128, "frame_shift": 10.0},
}


def _reference(waves, options, length):
    return np.stack([fbank_from_options(w, options, length)[0].astype(np.float16) for w in waves])


def _wave(rng, samples):
    t = np.arange(samples) / RATE
    kind = rng.integers(3)
    if kind == 0:  # tone plus noise, with a DC offset (each wave is centred on its own mean)
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(50, 7000) * t) + rng.normal(0, 0.05, samples)
        wave += rng.uniform(-0.2, 0.2)
    elif kind == 1:  # chirp
        wave = 0.5 * np.sin(2 * np.pi * (rng.uniform(100, 500) + rng.uniform(0, 3000) * t) * t)
    else:  # loud noise with silent stretches (log of the epsilon floor)
        wave = rng.uniform(-1, 1, samples) * (rng.uniform(size=samples) > 0.3)
        wave[: samples // 4] = 0
    return wave.astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_bit_exact_over_random_batches(name, threads):
    options, rng = OPTIONS[name], np.random.default_rng(len(name) + threads)
    size, shift = frame_geometry(options)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for trial in range(12):
            length = int(rng.choice([50, 150, 301, 1056]))
            window = int(rng.integers(size, 4 * RATE))
            count = int(rng.integers(1, 17))
            # windows of one length and a short last window, as tagging cuts them; sometimes all random
            lengths = [window] * (count - 1) + [int(rng.integers(size, window + 1))]
            if trial % 3 == 2:
                lengths = [int(rng.integers(size, 4 * RATE)) for _ in range(count)]
            if trial % 4 == 3:  # around the alone threshold and whole frame shifts
                edge = size + (ALONE_BELOW - 1) * shift
                lengths = [edge - 1, edge, edge + 1, size, size + shift - 1, 3 * RATE, 3 * RATE + 7][:count]
            waves = [_wave(rng, n) for n in lengths]
            got, want = fbanks(waves, options, length), _reference(waves, options, length)
            assert got.dtype == np.float16 and got.shape == want.shape
            np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16), err_msg=f"{name} {lengths}")
    finally:
        torch.set_num_threads(before)


def test_too_short_and_other_options():
    options = OPTIONS["demo"]
    size, _ = frame_geometry(options)
    for short in (np.zeros(size - 1, np.float32), np.zeros(0, np.float32)):  # as the per-window fbank fails
        with pytest.raises((AudioProblem, AssertionError)) as want:
            fbank_from_options(short, options, 150)
        with pytest.raises(want.type):
            fbanks([np.ones(3 * RATE, np.float32), short], options, 150)
    dithered = {**options, "dither": 1.0}
    assert frame_local(options) and not frame_local(dithered) and not frame_local({**options, "snip_edges": False})
    waves = [_wave(np.random.default_rng(0), 2 * RATE)]
    torch.manual_seed(0)
    first = fbanks(waves, dithered, 150)
    torch.manual_seed(0)
    np.testing.assert_array_equal(first, per_window(waves, dithered, 150))  # the per-window route

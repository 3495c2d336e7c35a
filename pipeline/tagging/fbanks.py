"""The windows' fbanks in one call: `fbanks(waves, options, length)` is `fbank_from_options` of each window
(`pipeline.features.features`, the features stage's fbank), rounded to float16 as the features stage stores
it, for a whole batch of windows in one `kaldi.fbank` call instead of one call per window.

Why it gives the same numbers: Kaldi's frames (`snip_edges`, the pipeline's framing) are frame-local (each
frame's DC offset, pre-emphasis, window, FFT, power and mel product use only its own samples; dither is 0
and no mean is taken over frames). So each wave is centred on its own mean (as `fbank_from_options` does),
padded with zeros to a whole number of frame shifts, and the waves are put end to end: the frames that lie
within one wave are that wave's frames, at a known offset, and those that straddle two waves are dropped.
A wave of fewer than `ALONE_BELOW` frames (a short last window) is computed alone by `fbank_from_options`:
the mel matrix product of a few rows takes another MKL kernel, whose roundings differ from those of the same
rows within a larger product. Options that are not frame-local (dither, subtract_mean, snip_edges false,
min_duration) take the per-window route for every wave. tests/tagging/test_fbanks.py checks the equality bit
for bit in float16 over random windows, lengths and both 16 kHz frame options.

Measured (2 cores, a busy machine): the fbanks of 10 minutes in windows of 3 s every 1.5 s, 16 windows a call,
took 0.38 and 0.34 s against 0.44 and 0.83 s one call per window (1.2x and 2.5x, two runs).
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

from pipeline.features.features import fbank_from_options

ALONE_BELOW = 64  # frames: a wave of fewer is computed alone (see the module's docstring)


def frame_geometry(options: dict) -> tuple[int, int]:
    """(frame length, frame shift) in samples, as Kaldi turns milliseconds into samples."""
    rate = float(options["sample_frequency"])
    return int(rate * float(options["frame_length"]) * 0.001), int(rate * float(options["frame_shift"]) * 0.001)


def frame_local(options: dict) -> bool:
    """Whether every fbank frame depends only on its own samples with these options (then waves can share a call)."""
    return (
        float(options.get("dither", 0.0)) == 0.0
        and not options.get("subtract_mean", False)
        and options.get("snip_edges", True)
        and float(options.get("min_duration", 0.0)) == 0.0
    )


def per_window(waves: list[np.ndarray], options: dict, length: int) -> np.ndarray:
    """`[n, length, mel bins]` float16, one `fbank_from_options` call per wave: the reference."""
    return np.stack([fbank_from_options(wave, options, length)[0].astype(np.float16) for wave in waves])


def fbanks(waves: list[np.ndarray], options: dict, length: int) -> np.ndarray:
    """`[n, length, mel bins]` float16: `fbank_from_options(wave, options, length)[0]` of each wave, rounded to
    float16 (zero-padded or cut to `length` frames), the waves of at least `ALONE_BELOW` frames in one call."""
    if not frame_local(options):
        return per_window(waves, options, length)
    size, shift = frame_geometry(options)
    out = np.zeros((len(waves), length, int(options["num_mel_bins"])), np.float16)
    pieces, spans, at = [], [], 0  # spans: (row, first frame in the joined fbank, frames)
    for row, wave in enumerate(waves):
        if len(wave) < size + (ALONE_BELOW - 1) * shift:
            out[row] = fbank_from_options(wave, options, length)[0]  # raises AudioProblem below one frame
            continue
        tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        centred = tensor - tensor.mean()
        padded = -(-len(tensor) // shift) * shift
        pieces.append(torch.nn.functional.pad(centred, (0, padded - len(tensor))) if padded > len(tensor) else centred)
        spans.append((row, at // shift, 1 + (len(tensor) - size) // shift))
        at += padded
    if pieces:
        joined = kaldi.fbank(torch.cat(pieces)[None], **options).numpy()
        for row, first, frames in spans:
            kept = min(frames, length)
            out[row, :kept] = joined[first : first + kept]
    return out

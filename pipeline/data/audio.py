"""Reading any common audio file, checking it, and writing the pipeline's 16 kHz mono FLAC.

libsndfile (soundfile) reads wav/flac/ogg/mp3 quickly; PyAV, which bundles FFmpeg's decoders,
reads the rest (m4a/aac, ...) so no system FFmpeg is needed. Problems come back as
`AudioProblem(reason, detail)` so the caller can skip or fail under `data.on_bad`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.core.io import atomic_path

SAMPLE_RATE = 16000
MIN_SECONDS = 0.025  # one 25 ms analysis frame: anything shorter yields no fbank frame


class AudioProblem(Exception):
    """A clip that cannot be used; `reason` is a short machine-readable key for reports."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _wav_truncation(path: Path) -> str | None:
    """libsndfile silently shortens a WAV whose data chunk is cut off; read the header ourselves."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                available = size - offset - 8
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    return f"data chunk declares {chunk_size} bytes but only {available} are present"
                return None
            offset += 8 + chunk_size + (chunk_size & 1)
    return None


def _pyav_open(path: Path):
    """FFmpeg (PyAV): `(rate, channels, frames or None, blocks)`, the blocks `[channels, n]` float32
    decoded a frame at a time (integer samples scaled to [-1, 1)); `frames` from the container's
    duration, an estimate."""
    import av

    try:
        container = av.open(str(path))
    except Exception as err:  # av raises many error classes for damaged input
        raise AudioProblem("unreadable", _cannot_decode(path, err)) from None
    if not container.streams.audio:
        container.close()
        raise AudioProblem("unreadable", f"{path}: no audio stream")
    stream = container.streams.audio[0]
    frames = round(container.duration * stream.rate / 1_000_000) if container.duration and stream.rate else None

    def blocks():
        try:
            with container:
                for frame in container.decode(stream):
                    data = frame.to_ndarray()
                    if not frame.format.is_planar:  # interleaved: [1, samples * channels]
                        data = data.reshape(-1, frame.layout.nb_channels).T
                    yield _as_float(data)
        except AudioProblem:
            raise
        except Exception as err:
            raise AudioProblem("unreadable", _cannot_decode(path, err)) from None

    return stream.rate, stream.channels, frames, blocks()


def _as_float(data: np.ndarray) -> np.ndarray:
    """Decoded samples as float32 in [-1, 1): integer PCM (ALAC, PCM in containers libsndfile does not
    read) scaled by its full scale; unsigned 8-bit is offset by half its range, as it is stored."""
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / np.float32(-np.iinfo(data.dtype).min)
    return data.astype(np.float32)


def _cannot_decode(path: Path, err: Exception) -> str:
    return f"{path}: cannot decode ({type(err).__name__}: {err})"


def _decode_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    rate, _, _, blocks = _pyav_open(path)
    chunks = list(blocks)
    return (np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)), rate


def _check_file(path: Path) -> None:
    """What is wrong before decoding: a missing or empty file, a truncated WAV."""
    if not path.is_file():
        raise AudioProblem("missing_file", f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioProblem("empty_audio", f"{path}: file is empty (0 bytes)")
    truncation = _wav_truncation(path)
    if truncation:
        raise AudioProblem("truncated", f"{path}: truncated WAV ({truncation})")


def _decode(path: str | Path, with_libsndfile, with_pyav):
    """`with_libsndfile(path_text)` for what libsndfile reads; a damaged stream is an AudioProblem, and a
    format it does not know goes to FFmpeg: `with_pyav(path)`."""
    path = Path(path)
    _check_file(path)
    try:
        return with_libsndfile(str(path))
    except sf.LibsndfileError as err:
        if problem := _damaged(path, err):
            raise problem from None
    except (RuntimeError, TypeError, ValueError):
        pass  # a format libsndfile does not know: let FFmpeg try
    return with_pyav(path)


def _damaged(path: Path, err: sf.LibsndfileError) -> AudioProblem | None:
    if "lost sync" in str(err) or "truncated" in str(err).lower():
        return AudioProblem("truncated", f"{path}: truncated or damaged stream ({err})")
    return None


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file to float32 `[channels, samples]` at its own sample rate."""

    def with_libsndfile(text):
        wave, rate = sf.read(text, dtype="float32", always_2d=True)
        return np.ascontiguousarray(wave.T), rate

    return _decode(path, with_libsndfile, _decode_with_pyav)


@dataclass
class MonoStream:
    """A file decoded a block at a time: `blocks` yields float32 mono (channels averaged as `downmix`
    does) at the file's own `rate`; `frames`: its length in samples as the container states it (an
    estimate for progress; None when unknown). Problems found while reading come from `blocks`."""

    rate: int
    channels: int
    frames: int | None
    blocks: Iterator[np.ndarray]


def open_mono(path: str | Path, block_seconds: float = 30.0) -> MonoStream:
    """Open any common audio file for reading a block at a time, whatever its length (an hour of
    44.1 kHz stereo is 1.3 GB as float32, and nothing here holds more than a block). Problems that
    show at opening are raised here, as `read_audio`'s."""
    path = Path(path)

    def with_libsndfile(text):
        handle = sf.SoundFile(text)
        step = max(1, int(block_seconds * handle.samplerate))

        def blocks():
            with handle:
                try:
                    while len(block := handle.read(step, dtype="float32", always_2d=True)):
                        yield downmix(block.T)
                except sf.LibsndfileError as err:
                    raise (_damaged(path, err) or AudioProblem("unreadable", _cannot_decode(path, err))) from None

        return MonoStream(handle.samplerate, handle.channels, handle.frames, blocks())

    def with_pyav(path):
        rate, channels, frames, blocks = _pyav_open(path)
        return MonoStream(rate, channels, frames, (downmix(block) for block in blocks))

    return _decode(path, with_libsndfile, with_pyav)


def check_wave(wave: np.ndarray, rate: int, source: str) -> None:
    """Reject audio no fbank can be computed from."""
    check_finite(wave, source)
    check_length(wave.shape[-1], rate, source)


def check_finite(wave: np.ndarray, source: str) -> None:
    if not np.isfinite(wave).all():
        raise AudioProblem("non_finite", f"{source}: audio contains NaN or infinite samples")


def check_length(samples: int, rate: int, source: str) -> None:
    if samples == 0:
        raise AudioProblem("empty_audio", f"{source}: audio has zero samples")
    if samples < MIN_SECONDS * rate:
        raise AudioProblem(
            "too_short", f"{source}: {samples / rate * 1000:.1f} ms of audio, shorter than one 25 ms frame"
        )


def downmix(wave: np.ndarray) -> np.ndarray:
    """`[channels, samples]` (or `[samples]`) -> float32 mono: the mean of the channels, summed in float64."""
    return wave.mean(axis=0, dtype=np.float64).astype(np.float32) if wave.ndim == 2 else wave.astype(np.float32)


def resample(mono: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Windowed-sinc resampling (torchaudio's defaults) of a float32 mono wave."""
    if rate == target_rate:
        return mono
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(mono), rate, target_rate).numpy()


def resample_blocks(
    blocks: Iterable[np.ndarray], rate: int, target_rate: int, chunk_seconds: float = 30.0
) -> Iterator[np.ndarray]:
    """`resample` of a mono wave that arrives in consecutive blocks, yielded in chunks of about
    `chunk_seconds`: memory stays at one chunk whatever the length, and the chunks put together equal
    `resample` of the whole wave. Why they do: torchaudio computes each output sample from the inputs
    around it, in periods of `rate / gcd` inputs; each chunk here starts on a period and is resampled
    with `context` inputs of the wave on both sides, more than the sinc kernel reaches (6 zero
    crossings: under 7 inputs per 16 kHz output), so every kept output sees the same inputs."""
    common = math.gcd(rate, target_rate)
    period, out_period = rate // common, target_rate // common
    context = period * -(-max(64, rate // 100) // period)
    step = period * max(1, round(chunk_seconds * rate / period))
    pending, held, left = [], 0, 0  # the blocks not yet resampled, with `left` inputs of context before them
    for block in blocks:
        pending.append(block)
        held += len(block)
        while held - left >= step + context:  # a chunk and its context on the right have arrived
            wave = np.concatenate(pending)
            yield resample(wave[: left + step + context], rate, target_rate)[
                left // period * out_period : (left + step) // period * out_period
            ]
            keep = max(0, left + step - context)
            pending, held, left = [wave[keep:]], len(wave) - keep, left + step - keep
    wave = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    if len(wave) > left:
        yield resample(wave, rate, target_rate)[left // period * out_period :]


def to_mono(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Average the channels and resample (windowed-sinc, torchaudio) to `target_rate`."""
    return resample(downmix(wave), rate, target_rate)


def to_mono_16k(wave: np.ndarray, rate: int) -> np.ndarray:
    """Average the channels and resample (windowed-sinc, torchaudio) to 16 kHz."""
    return to_mono(wave, rate, SAMPLE_RATE)


def write_flac(path: str | Path, mono: np.ndarray) -> None:
    """16-bit FLAC, written atomically (samples beyond full scale are clipped, as any 16-bit export would)."""
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(mono, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="FLAC")


def is_valid_clip(path: str | Path) -> bool:
    """A finished output of ours: a readable 16 kHz mono FLAC at least one frame long."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames >= MIN_SECONDS * SAMPLE_RATE

"""Reading any common audio file, checking it, and writing the pipeline's 16 kHz mono FLAC.

libsndfile (soundfile) reads wav/flac/ogg/mp3 quickly; PyAV, which bundles FFmpeg's decoders,
reads the rest (m4a/aac, ...) so no system FFmpeg is needed. Problems come back as
`AudioProblem(reason, detail)` so the caller can skip or fail under `data.on_bad`.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.io import atomic_path

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


def _decode_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioProblem("unreadable", f"{path}: no audio stream")
            stream = container.streams.audio[0]
            chunks = []
            for frame in container.decode(stream):
                data = frame.to_ndarray()
                if frame.format.is_planar:
                    chunks.append(data.astype(np.float32))
                else:  # interleaved: [1, samples * channels]
                    chunks.append(data.reshape(-1, frame.layout.nb_channels).T.astype(np.float32))
            rate = stream.rate
    except AudioProblem:
        raise
    except Exception as err:  # av raises many error classes for damaged input
        raise AudioProblem("unreadable", f"{path}: cannot decode ({type(err).__name__}: {err})") from None
    if not chunks:
        return np.zeros((1, 0), np.float32), rate
    wave = np.concatenate(chunks, axis=1)
    if np.issubdtype(chunks[0].dtype, np.integer):
        wave /= np.iinfo(chunks[0].dtype).max
    return wave, rate


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
    format it does not know goes to FFmpeg: `with_pyav(wave [channels, samples], rate)`."""
    path = Path(path)
    _check_file(path)
    try:
        return with_libsndfile(str(path))
    except sf.LibsndfileError as err:
        if "lost sync" in str(err) or "truncated" in str(err).lower():
            raise AudioProblem("truncated", f"{path}: truncated or damaged stream ({err})") from None
    except (RuntimeError, TypeError, ValueError):
        pass  # a format libsndfile does not know: let FFmpeg try
    return with_pyav(*_decode_with_pyav(path))


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file to float32 `[channels, samples]` at its own sample rate."""
    def with_libsndfile(text):
        wave, rate = sf.read(text, dtype="float32", always_2d=True)
        return np.ascontiguousarray(wave.T), rate

    return _decode(path, with_libsndfile, lambda wave, rate: (wave, rate))


def read_mono(path: str | Path, block_seconds: float = 30.0) -> tuple[np.ndarray, int, int]:
    """Decode a file to float32 mono at its own rate, channels averaged as `downmix` does; returns
    `(mono, rate, channels)`. What libsndfile reads is read a block at a time, so a long multichannel
    file is never in memory whole (an hour of 44.1 kHz stereo is 1.3 GB as float32); what only
    FFmpeg reads is decoded whole first. Problems as `read_audio`'s."""
    def with_libsndfile(text):
        with sf.SoundFile(text) as handle:
            rate, channels, step = handle.samplerate, handle.channels, max(1, int(block_seconds * handle.samplerate))
            blocks = []
            while len(block := handle.read(step, dtype="float32", always_2d=True)):
                blocks.append(downmix(block.T))
        return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), rate, channels

    return _decode(path, with_libsndfile, lambda wave, rate: (downmix(wave), rate, wave.shape[0]))


def check_wave(wave: np.ndarray, rate: int, source: str) -> None:
    """Reject audio no fbank can be computed from."""
    if wave.size == 0:
        raise AudioProblem("empty_audio", f"{source}: audio has zero samples")
    if not np.isfinite(wave).all():
        raise AudioProblem("non_finite", f"{source}: audio contains NaN or infinite samples")
    if wave.shape[-1] < MIN_SECONDS * rate:
        seconds = wave.shape[-1] / rate
        raise AudioProblem("too_short", f"{source}: {seconds * 1000:.1f} ms of audio, shorter than one 25 ms frame")


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

"""Cutting [start, end] out of an audio file with PyAV (whole downloaded or local videos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.audio import AudioProblem


def _frame_array(frame) -> np.ndarray:
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # interleaved: [1, samples * channels]
        data = data.reshape(-1, frame.layout.nb_channels).T
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / np.iinfo(data.dtype).max
    return data.astype(np.float32)


def decode_segment(path: str | Path, start: float, end: float) -> tuple[np.ndarray, int]:
    """Samples [start, end) (seconds) of a file's first audio stream: float32 [channels, samples]."""
    import av

    chunks, t0, count, rate = [], None, 0, None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioProblem("unreadable", f"{path}: no audio stream")
            stream = container.streams.audio[0]
            sought = False
            if start > 1.0 and stream.time_base:
                try:
                    container.seek(int((start - 1.0) / stream.time_base), stream=stream)
                    sought = True
                except av.error.FFmpegError:
                    sought = False
            for frame in container.decode(stream):
                data = _frame_array(frame)
                if t0 is None:
                    rate = frame.sample_rate
                    t0 = frame.time if frame.time is not None else (None if sought else 0.0)
                    if t0 is None:
                        raise AudioProblem("unreadable", f"{path}: no timestamps to locate [{start}, {end}] by")
                chunks.append(data)
                count += data.shape[1]
                if t0 + count / rate >= end:
                    break
    except AudioProblem:
        raise
    except Exception as err:  # av raises many error classes for damaged input
        raise AudioProblem("unreadable", f"{path}: cannot decode ({type(err).__name__}: {err})") from None
    if not chunks:
        raise AudioProblem("empty_audio", f"{path}: no audio in [{start}, {end}]")
    wave = np.concatenate(chunks, axis=1)
    first = max(0, round((start - t0) * rate))
    last = max(first, round((end - t0) * rate))
    return np.ascontiguousarray(wave[:, first:last]), rate

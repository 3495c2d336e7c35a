import numpy as np
import pytest
import soundfile as sf

from pipeline.data.audio import (
    SAMPLE_RATE,
    AudioProblem,
    check_wave,
    is_valid_clip,
    read_audio,
    to_mono_16k,
    write_flac,
)
from tests.conftest import tone, write_encoded


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3", ".m4a"])
def test_common_formats_decode(tmp_path, suffix):
    path = write_encoded(tmp_path / f"x{suffix}", tone(1.0, 22050, channels=2), 22050)
    wave, rate = read_audio(path)
    assert rate == 22050 and wave.shape[0] == 2 and wave.dtype == np.float32
    # lossy codecs pad a little; all keep roughly one second and the tone's level
    assert abs(wave.shape[1] / rate - 1.0) < 0.1
    assert 0.15 < np.abs(wave[0]).max() < 0.4


def test_stereo_44k_becomes_16k_mono_with_the_right_duration(tmp_path):
    src = write_encoded(tmp_path / "s.wav", tone(2.5, 44100, channels=2, freq=1000.0), 44100)
    wave, rate = read_audio(src)
    mono = to_mono_16k(wave, rate)
    assert mono.ndim == 1 and mono.shape[0] == int(2.5 * SAMPLE_RATE)
    out = tmp_path / "s.flac"
    write_flac(out, mono)
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames, info.format) == (16000, 1, 40000, "FLAC")
    assert is_valid_clip(out)
    # the 1 kHz tone survives resampling: its spectrum peaks at 1 kHz
    back, _ = sf.read(str(out))
    peak_hz = np.argmax(np.abs(np.fft.rfft(back))) * SAMPLE_RATE / len(back)
    assert abs(peak_hz - 1000) < 2


def _problem(fn, *args):
    with pytest.raises(AudioProblem) as err:
        fn(*args)
    return err.value.reason


def test_missing_corrupt_empty_and_truncated_files(tmp_path):
    assert _problem(read_audio, tmp_path / "none.wav") == "missing_file"
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"this is not audio at all" * 50)
    assert _problem(read_audio, corrupt) == "unreadable"
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    assert _problem(read_audio, empty) == "empty_audio"
    full = write_encoded(tmp_path / "full.wav", tone(1.0, 16000), 16000).read_bytes()
    (tmp_path / "cut.wav").write_bytes(full[: len(full) // 2])
    assert _problem(read_audio, tmp_path / "cut.wav") == "truncated"
    full = write_encoded(tmp_path / "full.flac", np.random.default_rng(0).normal(0, 0.1, 32000), 16000).read_bytes()
    (tmp_path / "cut.flac").write_bytes(full[: len(full) // 2])
    assert _problem(read_audio, tmp_path / "cut.flac") == "truncated"


def test_header_only_wav_is_zero_length(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000)
    wave, rate = read_audio(path)
    assert _problem(check_wave, wave, rate, str(path)) == "empty_audio"


def test_too_short_and_non_finite(tmp_path):
    assert _problem(check_wave, np.zeros((1, 399), np.float32), 16000, "x") == "too_short"
    check_wave(np.zeros((1, 400), np.float32), 16000, "x")  # exactly one 25 ms frame is enough
    bad = np.zeros((1, 1600), np.float32)
    bad[0, 5] = np.nan
    assert _problem(check_wave, bad, 16000, "x") == "non_finite"
    bad[0, 5] = np.inf
    assert _problem(check_wave, bad, 16000, "x") == "non_finite"
    # NaN written to a float WAV survives the round trip and is caught
    path = tmp_path / "nan.wav"
    sf.write(str(path), np.where(np.arange(1600) == 7, np.nan, 0.1).astype(np.float32), 16000, subtype="FLOAT")
    wave, rate = read_audio(path)
    assert _problem(check_wave, wave, rate, str(path)) == "non_finite"


def test_is_valid_clip_rejects_partial_or_foreign_files(tmp_path):
    assert not is_valid_clip(tmp_path / "missing.flac")
    half = tmp_path / "half.flac"
    half.write_bytes(b"fLaC" + b"\0" * 10)
    assert not is_valid_clip(half)
    stereo = tmp_path / "st.flac"
    sf.write(str(stereo), np.zeros((1600, 2)), 16000)
    assert not is_valid_clip(stereo)


def test_write_flac_is_atomic_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "a.flac"
    write_flac(out, np.zeros(1600, np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["a.flac"]


def read_mono(path, block_seconds=30.0):
    """The whole of `open_mono`'s blocks: `(mono, rate, channels)`."""
    from pipeline.data.audio import open_mono

    stream = open_mono(path, block_seconds)
    blocks = list(stream.blocks)
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), stream.rate, stream.channels


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".m4a"])
def test_read_mono_block_by_block_equals_read_audio_then_downmix(tmp_path, suffix):
    from pipeline.data.audio import downmix

    path = write_encoded(tmp_path / f"x{suffix}", tone(2.3, 22050, channels=2), 22050)
    wave, rate = read_audio(path)
    mono, mono_rate, channels = read_mono(path, block_seconds=0.25)  # blocks that do not divide the length
    assert (mono_rate, channels) == (rate, 2) and mono.dtype == np.float32
    assert np.array_equal(mono, downmix(wave))


def test_read_mono_reports_the_problems_read_audio_reports(tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"this is not audio at all" * 50)
    (tmp_path / "empty.flac").write_bytes(b"")
    full = write_encoded(tmp_path / "full.flac", np.random.default_rng(0).normal(0, 0.1, 32000), 16000).read_bytes()
    (tmp_path / "cut.flac").write_bytes(full[: len(full) // 2])
    for name in ("none.wav", "corrupt.wav", "empty.flac", "cut.flac"):
        assert _problem(read_mono, tmp_path / name) == _problem(read_audio, tmp_path / name)


def test_integer_pcm_decoded_by_ffmpeg_is_scaled_to_full_scale(tmp_path):
    """ALAC (in .m4a, which libsndfile does not read) decodes to 32-bit integers: they must come out
    in [-1, 1) like every other format (they came out unscaled, 2^31 times too loud, before)."""
    import av

    rate = 22050
    wave = np.stack([tone(1.5, rate), 0.5 * tone(1.5, rate)])
    with av.open(str(tmp_path / "x.m4a"), "w") as out:
        stream = out.add_stream("alac", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.round(wave * 32767).astype(np.int16), format="s16p", layout="stereo")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    decoded, decoded_rate = read_audio(tmp_path / "x.m4a")
    assert decoded_rate == rate and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded[:, : wave.shape[1]], wave, atol=1e-4)


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000, 16000, 11025])
def test_resampling_block_by_block_equals_resampling_the_whole_wave(rate):
    from pipeline.data.audio import resample, resample_blocks

    rng = np.random.default_rng(rate)
    for seconds in (0.0001, 0.3, 3.7):
        wave = rng.normal(0, 0.3, max(1, int(seconds * rate))).astype(np.float32)
        blocks = np.split(wave, np.sort(rng.choice(np.arange(1, len(wave)), min(len(wave) - 1, 9), replace=False)))
        chunks = list(resample_blocks(iter(blocks), rate, 16000, chunk_seconds=0.5))  # many chunks, odd blocks
        whole = resample(wave, rate, 16000)
        assert sum(map(len, chunks)) == len(whole)
        np.testing.assert_allclose(np.concatenate(chunks), whole, rtol=0, atol=1e-6)  # float rounding only
    assert list(resample_blocks(iter([]), rate, 16000)) == []


def test_open_mono_reads_lazily_and_reports_damage_found_while_reading(tmp_path):
    from pipeline.data.audio import open_mono

    path = write_encoded(tmp_path / "x.flac", tone(3.0, 16000, channels=2), 16000)
    stream = open_mono(path, block_seconds=1.0)
    assert (stream.rate, stream.channels, stream.frames) == (16000, 2, 48000)
    assert [len(block) for block in stream.blocks] == [16000, 16000, 16000]
    full = write_encoded(tmp_path / "full.flac", np.random.default_rng(0).normal(0, 0.1, 64000), 16000).read_bytes()
    (tmp_path / "cut.flac").write_bytes(full[: len(full) // 2])
    with pytest.raises(AudioProblem, match="cut.flac: truncated or damaged stream") as err:
        list(open_mono(tmp_path / "cut.flac", block_seconds=0.5).blocks)
    assert err.value.reason == "truncated"

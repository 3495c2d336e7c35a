import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import AudioProblem, SAMPLE_RATE, check_wave, is_valid_clip, read_audio, to_mono_16k, write_flac
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


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".m4a"])
def test_read_mono_block_by_block_equals_read_audio_then_downmix(tmp_path, suffix):
    from pipeline.audio import downmix, read_mono

    path = write_encoded(tmp_path / f"x{suffix}", tone(2.3, 22050, channels=2), 22050)
    wave, rate = read_audio(path)
    mono, mono_rate, channels = read_mono(path, block_seconds=0.25)  # blocks that do not divide the length
    assert (mono_rate, channels) == (rate, 2) and mono.dtype == np.float32
    assert np.array_equal(mono, downmix(wave))


def test_read_mono_reports_the_problems_read_audio_reports(tmp_path):
    from pipeline.audio import read_mono

    (tmp_path / "corrupt.wav").write_bytes(b"this is not audio at all" * 50)
    (tmp_path / "empty.flac").write_bytes(b"")
    full = write_encoded(tmp_path / "full.flac", np.random.default_rng(0).normal(0, 0.1, 32000), 16000).read_bytes()
    (tmp_path / "cut.flac").write_bytes(full[: len(full) // 2])
    for name in ("none.wav", "corrupt.wav", "empty.flac", "cut.flac"):
        assert _problem(read_mono, tmp_path / name) == _problem(read_audio, tmp_path / name)

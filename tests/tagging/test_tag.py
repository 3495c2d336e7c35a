import csv
import io
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.core.errors import PipelineError
from pipeline.data.audio import read_audio, to_mono
from pipeline.data.manifest import read_manifest
from pipeline.evaluation.average import average_checkpoints
from pipeline.tagging.command import main
from pipeline.tagging.frames import FrameChunk
from pipeline.tagging.tag import (
    input_length,
    load_tagger,
    plan_windows,
    tag_file,
    tag_wave,
    window_fbanks,
)
from pipeline.training.augment import prepare_eval_batch
from pipeline.training.checkpoint import REQUIRED_KEYS, load_checkpoint, save_checkpoint
from pipeline.training.train import train
from tests.conftest import REPO, run_module, tone, write_encoded
from tests.training.test_train import _inputs, _params, tiny_data  # noqa: F401  (tiny_data: the module-scoped tiny data)

WINDOW, HOP = 10.0, 5.0
TEN_FIVE = ("--window", "10", "--hop", "5")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: the suite runs two workers on two cores, and OpenMP threads that spin
    waiting for a busy core made these tests 2-3x slower (`psla` itself waits passively, see commands.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):  # noqa: F811
    """One tiny model trained with the tiny preset (tracking off), shared by every test here."""
    out = tmp_path_factory.mktemp("tag-run")
    train(_params(tiny_data), _inputs(tiny_data), out, seed=1, progress=False)
    return out


@pytest.fixture(scope="module")
def tagger(tiny_run):
    return load_tagger(tiny_run / "best.pt", "cpu")


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Files of every length the issue names: {name: (path, duration in seconds)}."""
    root = tmp_path_factory.mktemp("tag-audio")
    rng = np.random.default_rng(0)
    files = {
        "short": (write_encoded(root / "short.wav", tone(0.2, 16000), 16000), 0.2),
        "ten": (write_encoded(root / "ten.flac", tone(10.0, 22050, freq=880.0), 22050), 10.0),
        "ogg": (write_encoded(root / "seven.ogg", tone(7.3, 48000), 48000), 7.3),
    }
    long = tone(95.0, 44100, channels=2) + rng.normal(0, 0.02, (95 * 44100, 2)).astype(np.float32)
    sf.write(str(root / "long.wav"), long, 44100, subtype="PCM_16")
    files["long"] = (root / "long.wav", 95.0)
    return files


@pytest.fixture(scope="module")
def results(tagger, audio):
    return {name: tag_file(tagger, path, window=WINDOW, hop=HOP) for name, (path, _) in audio.items()}


def test_windows_step_by_hop_and_the_last_reaches_the_end():
    assert plan_windows(100, 160, 80).tolist() == [[0, 100]]  # shorter than a window: one window
    assert plan_windows(160, 160, 80).tolist() == [[0, 160]]
    assert plan_windows(161, 160, 80).tolist() == [[0, 160], [80, 161]]
    assert plan_windows(400, 160, 80)[:, 0].tolist() == [0, 80, 160, 240]
    assert plan_windows(400, 160, 80)[-1].tolist() == [240, 400]
    assert plan_windows(321, 160, 160).tolist() == [[0, 160], [160, 320], [320, 321]]


@pytest.mark.parametrize("name, windows", [("short", 1), ("ten", 1), ("ogg", 1), ("long", 18)])
def test_the_timeline_covers_the_whole_file(results, audio, name, windows):
    result, duration = results[name], audio[name][1]
    assert result.duration == pytest.approx(duration, abs=1e-4)
    assert len(result.starts) == windows == len(result.scores)
    assert result.starts[0] == 0 and result.ends[-1] == pytest.approx(duration, abs=1e-4)
    assert np.allclose(np.diff(result.starts), HOP)
    assert np.all(result.ends - result.starts <= WINDOW + 1e-9) and np.all(result.ends > result.starts)
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    assert np.all(result.max >= result.mean)
    assert result.ranking()[:1] == [int(np.argmax(result.max))]


def test_stereo_44k_file_is_downmixed_and_resampled_to_the_checkpoint_rate(results, tagger):
    long = results["long"]
    assert (long.sample_rate, long.channels) == (44100, 2) and tagger.sample_rate == 16000
    assert long.scores.shape == (18, len(tagger.class_ids))
    assert long.ends[-2] == pytest.approx(90.0) and long.starts[-1] == pytest.approx(85.0)


def test_windowed_fbanks_equal_the_features_stage_for_a_clip_of_one_window(tiny_data, tagger):  # noqa: F811
    """A window of exactly the training clip length sees what evaluation saw for that clip."""
    entries = read_manifest(tiny_data / "val.csv")
    with h5py.File(tiny_data / "val.h5", "r") as handle:
        stored = handle["fbank"][:3]
        clip_ids = [c.decode() for c in handle["clip_id"][:3]]
    for row, clip in enumerate(clip_ids):
        [entry] = [e for e in entries if e.clip_id == clip]
        wave, rate = read_audio(tiny_data / entry.audio)
        mono = to_mono(wave, rate, tagger.sample_rate)
        window = round(tagger.clip_seconds * tagger.sample_rate)
        assert len(mono) == window  # the demo clips are exactly one training clip long
        bounds = plan_windows(len(mono), window, window // 2)
        fbanks = window_fbanks(tagger, [mono[start:end] for start, end in bounds], input_length(tagger, window))
        assert fbanks.shape == (1, *stored.shape[1:]) and fbanks.dtype == stored.dtype
        assert np.array_equal(fbanks[0], stored[row])
        result = tag_file(tagger, tiny_data / entry.audio, window=tagger.clip_seconds, hop=tagger.clip_seconds / 2)
        with torch.no_grad():
            expected = tagger.model(
                prepare_eval_batch(torch.from_numpy(stored[row : row + 1]), tagger.norm.mean, tagger.norm.std)
            ).numpy()
        assert np.allclose(result.scores, expected, atol=1e-6)


def test_checkpoints_of_train_and_average_carry_what_tagging_needs(tiny_run, tmp_path, audio):
    for name in ("best.pt", "last.pt", "epoch_001.pt"):
        payload = load_checkpoint(tiny_run / name)
        assert set(REQUIRED_KEYS) <= set(payload)
        assert len(payload["class_names"]) == len(payload["class_ids"]) and payload["class_names"][0]
        assert payload["fbank_options"]["sample_frequency"] > 0 and payload["target_length"] > 0
    wa = average_checkpoints([tiny_run / "epoch_001.pt", tiny_run / "epoch_002.pt"])
    save_checkpoint(tmp_path / "wa.pt", wa)
    result = tag_file(load_tagger(tmp_path / "wa.pt", "cpu"), audio["ten"][0], window=WINDOW, hop=HOP)
    assert result.scores.shape[0] == 1 and np.all((result.scores >= 0) & (result.scores <= 1))


def test_a_file_shorter_than_one_window_is_one_padded_window_and_batching_changes_nothing(tagger, results):
    wave = tone(23.0, 16000)
    one = tag_wave(tagger, wave, 16000, window=WINDOW, hop=HOP, batch_size=1)
    many = tag_wave(tagger, wave, 16000, window=WINDOW, hop=HOP, batch_size=16)
    assert len(one.starts) == 4 and one.ends[-1] == pytest.approx(23.0)
    assert np.allclose(one.scores, many.scores, atol=1e-5)
    with pytest.raises(PipelineError, match="hop 6.0 s: must be positive and at most the window"):
        tag_wave(tagger, wave, 16000, window=5.0, hop=6.0)


def _tag(capsys, *args):
    """`psla tag` in this process: (exit status, stdout, stderr)."""
    try:
        main(["tag", *map(str, args), "--device", "cpu", "--no-progress"])
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_parses_with_top_k_and_the_timeline(tiny_run, audio, capsys):
    code, out, err = _tag(
        capsys,
        audio["ten"][0],
        audio["long"][0],
        "--model",
        tiny_run / "best.pt",
        "--format",
        "json",
        "--timeline",
        "--top-k",
        "3",
        *TEN_FIVE,
    )
    assert code == 0 and err == ""
    document = json.loads(out)
    assert document["ranked_by"] == "max" and document["errors"] == []
    ten, long = document["files"]
    assert long["file"] == str(audio["long"][0]) and long["windows"] == 18 and long["channels"] == 2
    for record in (ten, long):
        assert [c["rank"] for c in record["classes"]] == [1, 2, 3]
        maxes = [c["max"] for c in record["classes"]]
        assert maxes == sorted(maxes, reverse=True) and all(c["max"] >= c["mean"] for c in record["classes"])
        assert record["timeline"][0]["start"] == 0
        assert record["timeline"][-1]["end"] == pytest.approx(record["duration"])
        assert all(len(w["classes"]) == 3 for w in record["timeline"])
    assert [w["start"] for w in long["timeline"]] == [5.0 * i for i in range(18)]


def test_csv_and_table_outputs(tiny_run, audio, tagger, capsys):
    code, out, _ = _tag(
        capsys, audio["short"][0], audio["ogg"][0], "--model", tiny_run / "best.pt", "--format", "csv", "--top-k", "4"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0]) == ["file", "rank", "mid", "display_name", "max", "mean"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"] * 2
    assert {r["file"] for r in rows} == {str(audio["short"][0]), str(audio["ogg"][0])}
    assert all(r["display_name"] == tagger.class_names[tagger.class_ids.index(r["mid"])] for r in rows)

    code, out, _ = _tag(
        capsys,
        audio["long"][0],
        "--model",
        tiny_run / "best.pt",
        "--format",
        "csv",
        "--timeline",
        "--top-k",
        "2",
        *TEN_FIVE,
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    summary, windows = [r for r in rows if not r["start"]], [r for r in rows if r["start"]]
    assert code == 0 and len(summary) == 2 and len(windows) == 18 * 2
    assert float(windows[0]["start"]) == 0 and float(windows[-1]["end"]) == pytest.approx(95.0)
    assert all(r["max"] == r["mean"] for r in windows)

    code, out, _ = _tag(capsys, audio["ten"][0], "--model", tiny_run / "best.pt", "--top-k", "0")
    lines = out.splitlines()
    assert code == 0 and "ranked by max" in lines[0] and lines[1].split() == ["rank", "class", "mid", "max", "mean"]
    assert len(lines) == 2 + len(tagger.class_ids)  # --top-k 0: every class


def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path, audio, capsys):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "dict.pt")
    (tmp_path / "notes.txt").write_text("not a model\n")
    for model, message in (
        ("dict.pt", "not a checkpoint of this pipeline"),
        ("notes.txt", "not a readable checkpoint"),
        ("absent.pt", "checkpoint not found"),
    ):
        code, out, err = _tag(capsys, audio["short"][0], "--model", tmp_path / model)
        assert code == 2 and out == "" and len(err.splitlines()) == 1
        assert err.startswith(f"error: {tmp_path / model}: ") and message in err


@pytest.mark.slow
def test_console_script_with_only_the_checkpoint_and_a_bad_file_among_good_ones(tiny_run, audio, tmp_path):
    """`psla` from a folder holding nothing but a copy of best.pt: bad files are reported, the rest tagged."""
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tiny_run / "best.pt", alone / "model.pt")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFX garbage" * 100)
    write_encoded(tmp_path / "tiny.wav", tone(0.01, 16000), 16000)
    files = [
        audio["short"][0],
        tmp_path / "corrupt.wav",
        tmp_path / "missing.wav",
        tmp_path / "tiny.wav",
        audio["ten"][0],
    ]
    psla = os.path.join(os.path.dirname(sys.executable), "psla")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [psla, "tag", *map(str, files), "--model", "model.pt", "--format", "json", "--top-k", "2"],
        cwd=alone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    errors = proc.stderr.splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    for line, bad in zip(errors, files[1:4]):
        assert str(bad) in line
    document = json.loads(proc.stdout)
    assert [f["file"] for f in document["files"]] == [str(audio["short"][0]), str(audio["ten"][0])]
    assert [e["file"] for e in document["errors"]] == [str(p) for p in files[1:4]]
    assert sorted(os.listdir(alone)) == ["model.pt"]  # nothing written beside it

    proc = run_module(
        "pipeline.tagging.command",
        "tag",
        str(audio["ogg"][0]),
        "--model",
        str(alone / "model.pt"),
        "--hop",
        "20",
        cwd=alone,
        check=False,
    )
    # the default window: the tiny model's 1 s training clips
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: hop 20.0 s: must be positive and at most the window (1.0 s), or the timeline would have gaps"
    ]


def test_console_script_is_registered():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["psla"] == "pipeline.tagging.command:main"


def test_streamed_tagging_equals_scoring_the_whole_resampled_file(results, tagger, audio):
    """The 95 s file streams through 30 s blocks; the windows and scores are those of the whole file
    resampled at once and cut into `plan_windows`' windows."""
    wave, rate = read_audio(audio["long"][0])
    mono = to_mono(wave, rate, tagger.sample_rate)
    window, hop = round(WINDOW * tagger.sample_rate), round(HOP * tagger.sample_rate)
    bounds = plan_windows(len(mono), window, hop)
    fbanks = window_fbanks(tagger, [mono[start:end] for start, end in bounds], input_length(tagger, window))
    with torch.no_grad():
        expected = tagger.model(prepare_eval_batch(torch.from_numpy(fbanks), tagger.norm.mean, tagger.norm.std)).numpy()
    np.testing.assert_array_equal(results["long"].starts, bounds[:, 0] / tagger.sample_rate)
    np.testing.assert_allclose(results["long"].scores, expected, atol=1e-5)


def test_memory_does_not_grow_with_the_length_of_the_file(tagger, tmp_path):
    """Peak numpy memory (tracemalloc sees numpy's buffers) tagging 4 and 16 minutes of 44.1 kHz stereo:
    the same (about 50 MB: a few 30 s blocks), where holding the file as mono float32 alone would take
    42 and 169 MB. Measured: 49.08 and 49.10 MB."""
    import tracemalloc

    rng = np.random.default_rng(0)
    peaks = {}
    for minutes in (4, 16):
        path = tmp_path / f"{minutes}.flac"
        with sf.SoundFile(str(path), "w", 44100, 2, subtype="PCM_16", format="FLAC") as out:
            for _ in range(minutes * 6):
                out.write(rng.normal(0, 0.1, (441000, 2)).astype(np.float32))
        tracemalloc.start()
        result = tag_file(tagger, path, window=WINDOW, hop=HOP, batch_size=16)
        peaks[minutes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.ends[-1] == pytest.approx(60.0 * minutes)
    assert peaks[16] < 1.02 * peaks[4] and peaks[16] < 80e6, peaks


def test_unusable_audio_is_an_audio_problem_even_when_found_late_in_the_stream(tagger):
    from pipeline.data.audio import AudioProblem
    from pipeline.tagging.tag import tag_blocks

    def reasons(blocks, rate=16000):
        with pytest.raises(AudioProblem) as err:
            tag_blocks(tagger, iter(blocks), rate, window=WINDOW, hop=HOP, source="x.wav")
        return err.value.reason, str(err.value)

    good = tone(40.0, 16000)
    late_nan = good.copy()
    late_nan[-5] = np.nan  # in the last of several blocks, after windows were scored
    assert reasons(np.split(late_nan, 4)) == ("non_finite", "x.wav: audio contains NaN or infinite samples")
    assert reasons([]) == ("empty_audio", "x.wav: audio has zero samples")
    assert reasons([good[:100], good[100:200]]) == (
        "too_short",
        "x.wav: 12.5 ms of audio, shorter than one 25 ms frame",
    )
    assert reasons([tone(0.025, 44100)[:1102]], 44100)[0] == "too_short"  # 24.99 ms
    assert len(tag_blocks(tagger, [tone(0.03, 44100)[:1103]], 44100, window=WINDOW, hop=HOP).starts) == 1


# ----------------------------------------------------------------------------------------------
# default windows, frames, events, decisions


def test_default_windows_are_the_training_clip_length_and_half_of_it(tagger, audio):
    assert tagger.default_windows() == (tagger.clip_seconds, tagger.clip_seconds / 2)
    result = tag_file(tagger, audio["ogg"][0])
    assert (result.window, result.hop) == tagger.default_windows()
    assert len(result.starts) == len(plan_windows(round(7.3 * 16000), 16000, 8000))
    assert tag_file(tagger, audio["ogg"][0], window=2.0).hop == 1.0  # a window alone: hop half of it


def _frames(tagger, path, **options):
    chunks = []
    result = tag_file(tagger, path, frame_sink=chunks.append, **options)
    return result, FrameChunk.concatenate(chunks, len(tagger.class_ids))


def test_frames_of_one_training_clip_are_the_networks_frames(tiny_data, tagger):  # noqa: F811
    """A clip of the training length is one window: its frames are the model's own frames, one per
    backbone step, and its clip score is evaluation's."""
    [entry] = read_manifest(tiny_data / "val.csv")[:1]
    with h5py.File(tiny_data / "val.h5", "r") as handle:
        row = [c.decode() for c in handle["clip_id"][:]].index(entry.clip_id)
        stored = handle["fbank"][row : row + 1]
    result, frames = _frames(tagger, tiny_data / entry.audio)
    with torch.no_grad():
        clip, expected = tagger.model.clip_and_frames(
            prepare_eval_batch(torch.from_numpy(stored), tagger.norm.mean, tagger.norm.std)
        )
    step = tagger.clip_seconds / expected.shape[1]
    assert result.frame_step == pytest.approx(step) and len(frames) == expected.shape[1]
    np.testing.assert_allclose(frames.times, np.arange(len(frames)) * step, atol=1e-9)
    assert frames.ends[-1] == pytest.approx(result.duration)
    np.testing.assert_allclose(frames.scores, expected[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(result.scores[0], clip[0].numpy(), atol=1e-5)


def test_frames_cover_a_long_file_and_stay_in_0_1(tagger, audio):
    result, frames = _frames(tagger, audio["long"][0])
    assert frames.times[0] == 0 and frames.ends[-1] == pytest.approx(95.0)
    np.testing.assert_allclose(frames.times[1:], frames.ends[:-1])
    assert len(frames) == int(np.ceil(95.0 / result.frame_step - 1e-9))
    assert np.all((frames.scores >= 0) & (frames.scores <= 1))


def test_an_hour_with_frames_and_events_keeps_memory_flat(tagger, tmp_path):
    """Frames streamed to an event detector: peak numpy memory (tracemalloc) for 4 and 60 minutes of
    16 kHz audio is the same; frames held at once are a window's worth."""
    import tracemalloc

    from pipeline.tagging.events import EventDetector

    rng = np.random.default_rng(0)
    peaks = {}
    for minutes in (4, 60):
        path = tmp_path / f"{minutes}.wav"
        with sf.SoundFile(str(path), "w", 16000, 1, subtype="PCM_16") as out:
            for _ in range(minutes * 2):
                out.write(rng.normal(0, 0.1, 480000).astype(np.float32))
        detector = EventDetector(np.full(len(tagger.class_ids), 0.5))
        counted = []
        tracemalloc.start()
        result = tag_file(
            tagger, path, window=WINDOW, hop=WINDOW, frame_sink=lambda c, d=detector, n=counted: n.append(len(d.add(c)))
        )
        peaks[minutes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        detector.finish()
        path.unlink()
        assert result.ends[-1] == pytest.approx(60.0 * minutes) and len(counted) >= minutes * 6 - 1
    assert peaks[60] < 1.05 * peaks[4] and peaks[60] < 80e6, peaks


def test_frames_events_and_decisions_from_the_command(tiny_run, audio, tmp_path, capsys):
    model = tiny_run / "best.pt"
    code, out, _ = _tag(capsys, audio["ten"][0], "--model", model, "--frames", "--top-k", "2")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0]) == ["file", "time", "mid", "display_name", "score"]
    assert float(rows[0]["time"]) == 0 and len({r["time"] for r in rows}) * 2 == len(rows)

    code, out, err = _tag(capsys, audio["ten"][0], "--model", model, "--frames", "--format", "npz")
    assert code == 2 and "--out PATH.npz" in err
    code, _, _ = _tag(
        capsys,
        audio["ten"][0],
        audio["ogg"][0],
        "--model",
        model,
        "--frames",
        "--format",
        "npz",
        "--out",
        tmp_path / "f.npz",
    )
    with np.load(tmp_path / "f.npz") as saved:
        assert code == 0 and list(saved["files"]) == [str(audio["ten"][0]), str(audio["ogg"][0])]
        assert saved["scores_1"].shape == (len(saved["times_1"]), len(tagger_classes(model)))

    code, out, err = _tag(capsys, audio["ten"][0], "--model", model, "--events")
    assert code == 2 and "no thresholds" in err and "--thresholds metrics/thresholds.json" in err

    for fmt, first in (("csv", "file,onset,offset,mid,label,score"), ("dcase", "filename\tonset\toffset\tevent_label")):
        code, out, err = _tag(
            capsys, audio["long"][0], "--model", model, "--events", "--threshold", "0.2", "--format", fmt
        )
        assert code == 0 and out.splitlines()[0] == first and "thresholds: --threshold 0.2" in err
    code, out, _ = _tag(
        capsys, audio["long"][0], "--model", model, "--events", "--threshold", "0", "--format", "audacity"
    )
    onsets = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and onsets and all(float(a) < float(b) <= 95.0 for a, b, _ in onsets)  # threshold 0: every class
    assert len(onsets) == len(tagger_classes(model))  # one event per class over the whole file
    two_tracks = (audio["ten"][0], audio["ogg"][0], "--model", model, "--events", "--threshold", "0.5")
    code, _, err = _tag(capsys, *two_tracks, "--format", "audacity")
    assert code == 2 and "--out DIR" in err
    code, _, _ = _tag(capsys, *two_tracks, "--format", "audacity", "--out", tmp_path / "tracks")
    assert code == 0 and sorted(p.name for p in (tmp_path / "tracks").iterdir()) == ["seven.txt", "ten.txt"]

    code, out, _ = _tag(
        capsys, audio["ten"][0], "--model", model, "--decide", "--threshold", "0.0", "--format", "csv", "--top-k", "0"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {r["present"] for r in rows} == {"1"} and {r["threshold"] for r in rows} == {"0.0"}
    code, out, _ = _tag(capsys, audio["ten"][0], "--model", model, "--decide", "--threshold", "1.0")
    assert code == 0 and "present (0): none" in out
    code, _, err = _tag(capsys, audio["ten"][0], "--model", model, "--threshold", "0.5")
    assert code == 2 and "used with --decide or --events" in err


def tagger_classes(model):
    return load_checkpoint(model)["class_ids"]

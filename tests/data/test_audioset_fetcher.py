"""pipeline.data.audioset.fetcher (with process, failures): yt-dlp per segment against the fake
`yt-dlp` of tests/data/test_audioset.py: retries, permanent failures, timeouts, hostile ids, sections
with ffmpeg, shards, an interrupted run resumed, and no network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from pipeline.core.shards import shard_path, shard_slice
from pipeline.data.audio import AudioProblem, is_valid_clip
from pipeline.data.audioset.fetcher import OFFLINE_AFTER, Fetcher
from pipeline.data.audioset.segments import Segment
from pipeline.data.listing import Item
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import merge_shards, prepare_split, write_outputs
from pipeline.data.registry import class_metadata, list_split
from tests.conftest import REPO, run_module, write_params
from tests.data.test_audioset import (  # noqa: F401  (remote, fake_yt_dlp: the shared fixtures)
    BEHAVIOUR,
    CLASSES,
    FLAKY,
    GONE,
    HANG,
    HEADER,
    OK1,
    OK2,
    OK3,
    OK4,
    PRIVATE,
    _cli_prepare,
    _params,
    _prepare,
    _tree,
    fake_yt_dlp,
    remote,
)
from tests.data.test_download import closed_port

# every request goes to the test's own 127.0.0.1 server, never through a proxy
pytestmark = pytest.mark.usefixtures("no_proxy")


def test_yt_dlp_success_transient_permanent_and_timeout(tmp_path, remote, fake_yt_dlp):
    params = _params(tmp_path, remote, val_fraction=0.01, val_min_class_clips=100)  # all 8 in train
    manifest, report = _prepare(params, "train", tmp_path)
    assert report.requested == 9 and report.written == 5
    assert report.skipped_by_reason == {"private": 1, "removed": 1, "timeout": 1, "malformed_row": 1}
    assert [e.clip_id for e in manifest] == [
        f"Y{i}" for i in (f"{OK1}_5.000", f"{OK2}_0.000", f"{FLAKY}_2.000", f"{OK3}_3.000", f"{OK4}_0.500")
    ]
    assert manifest[0].labels == ("/m/09x0r", "/m/05zppz")
    calls = fake_yt_dlp()
    per_id = Counter(argv[argv.index("--") + 1].split("v=")[1] for argv in calls)
    assert per_id[FLAKY] == 2 and per_id[HANG] == 2  # transient and timeout: retried (retries=1)
    assert per_id[PRIVATE] == 1 and per_id[GONE] == 1  # permanent: not retried
    assert not any("rm -rf" in " ".join(argv) for argv in calls)
    argv = next(a for a in calls if a[-1].endswith(OK1))
    assert argv[-2:] == ["--", f"https://www.youtube.com/watch?v={OK1}"] and "--download-sections" not in argv
    assert argv[argv.index("-f") + 1] == "bestaudio/best"
    skips = {s["reason"]: s["detail"] for s in report.skips}
    assert "Private video" in skips["private"] and "within 1 s" in skips["timeout"]
    # cut exactly [start, end], 16 kHz mono FLAC: OK1 is [5, 15] of a 22.05 kHz stereo "video"
    wave, rate = sf.read(str(tmp_path / "data/audio/train" / f"Y{OK1}_5.000.flac"))
    assert rate == 16000 and wave.ndim == 1 and len(wave) == 160000
    for second in (0, 4, 9):
        middle = wave[second * 16000 + 4000 : second * 16000 + 12000]
        assert np.allclose(middle, 0.03 * (5 + second), atol=2e-3)
    assert not list((tmp_path / "tmp").iterdir())  # temporary downloads are gone
    # a rerun reuses every clip and calls yt-dlp only for the failures
    before = len(fake_yt_dlp())
    _, again = _prepare(params, "train", tmp_path)
    assert again.reused == 5 and again.written == 5
    retried = Counter(a[a.index("--") + 1].split("v=")[1] for a in fake_yt_dlp()[before:])
    assert set(retried) == {HANG}  # permanent failures are remembered (meta_dir/unavailable.tsv)
    assert again.skipped_by_reason == report.skipped_by_reason
    assert "earlier run" in {s["reason"]: s["detail"] for s in again.skips}["private"]


def test_permanent_errors_are_retried_when_asked(tmp_path, remote, fake_yt_dlp):
    (fake_yt_dlp.state / "behaviour.json").write_text(json.dumps({OK3: BEHAVIOUR[PRIVATE]}))
    _, report = _prepare(_params(tmp_path, remote), "eval", tmp_path)
    assert report.skipped_by_reason == {"private": 1} and len(fake_yt_dlp()) == 2
    params = _params(tmp_path, remote, retry_permanent=True, retries=2)
    _, report = _prepare(params, "eval", tmp_path)
    assert report.skipped_by_reason == {"private": 1} and report.reused == 1
    assert Counter(a[-1] for a in fake_yt_dlp())[f"https://www.youtube.com/watch?v={OK3}"] == 1 + 3


def test_hostile_id_never_reaches_a_process(tmp_path, remote, fake_yt_dlp, monkeypatch):
    hostile = Segment("abc;rm -rf /x", 0.0, 10.0, ("/m/09x0r",), "eval", "x.csv", 3)
    params = _params(tmp_path, remote)
    fetcher = Fetcher(params.data.shared, params.data.audioset)
    started = []
    monkeypatch.setattr("pipeline.data.audioset.process.subprocess.Popen", lambda *a, **k: started.append(a) or 1 / 0)
    with pytest.raises(AudioProblem) as err:
        fetcher.fetch(hostile)
    assert err.value.reason == "invalid_id" and started == []
    with pytest.raises(AudioProblem):
        fetcher.argv(hostile, "out.%(ext)s")
    with pytest.raises(AudioProblem):
        fetcher.load(Segment("-rf", 0.0, 10.0, ("/m/09x0r",), "eval", "x.csv", 4))
    assert started == [] and fake_yt_dlp() == []


def test_ffmpeg_present_fetches_only_the_section(tmp_path, remote, fake_yt_dlp):
    ffmpeg = fake_yt_dlp.bin / "ffmpeg"
    ffmpeg.write_text("#!/bin/sh\nexit 0\n")
    ffmpeg.chmod(0o755)
    params = _params(tmp_path, remote, ffmpeg="ffmpeg")
    manifest, report = _prepare(params, "eval", tmp_path)
    assert report.written == 2
    argv = next(a for a in fake_yt_dlp() if a[-1].endswith(OK3))
    assert argv[argv.index("--download-sections") + 1] == "*4.000-14.000"
    assert argv[argv.index("--ffmpeg-location") + 1] == str(ffmpeg)
    wave, rate = sf.read(str(tmp_path / "data/audio/eval" / f"Y{OK3}_4.000.flac"))
    assert len(wave) == 160000 and np.allclose(wave[4000:12000], 0.12, atol=2e-3)


def test_sharded_download_and_merge_equal_one_run(tmp_path, remote, fake_yt_dlp):
    (fake_yt_dlp.state / "behaviour.json").write_text("{}")  # every id downloads
    params = _params(tmp_path, remote, val_fraction=0.01, val_min_class_clips=100)
    classes, _ = class_metadata(params)
    parts, called_before = tmp_path / "parts", set()
    for index in range(3):
        listing = list_split(params, "train", classes)  # each job lists the whole split, then takes its block
        manifest, report = prepare_split(
            listing,
            dataset="audioset",
            audio_dir=parts / "audio",
            root=parts,
            on_bad="skip",
            shard=(index, 3),
            progress=False,
        )
        write_outputs(manifest, report, shard_path(parts / "train.csv", index), shard_path(parts / "train.json", index))
        called = {a[-1].split("v=")[1] for a in fake_yt_dlp()}
        block = listing.entries[shard_slice(len(listing.entries), (index, 3))]
        assert called - called_before == {e.clip_id[1:12] for e in block if isinstance(e, Item)}
        called_before = called
    merged, report = merge_shards(parts / "train.csv", parts / "train.json", 3)
    whole, single = _prepare(params, "train", tmp_path / "whole")
    assert [(e.clip_id, e.labels) for e in merged] == [(e.clip_id, e.labels) for e in whole]
    assert (
        (report.requested, report.written, report.skipped)
        == (single.requested, single.written, single.skipped)
        == (9, 8, 1)
    )


def test_cli_resumes_after_interruption(tmp_path, remote, fake_yt_dlp):
    ids = [f"slowclip{i:03d}" for i in range(12)]
    remote.files["/csv/eval_segments.csv"] = (
        HEADER + "".join(f'{y}, 0.000, 2.000, "/m/04rlf"\n' for y in ids)
    ).encode()
    (fake_yt_dlp.state / "behaviour.json").write_text(json.dumps({y: ["slow"] for y in ids}))
    write_params(tmp_path / "params.yaml", _tree(tmp_path, remote, concurrency=2))
    run_module(
        "pipeline.stages.metadata",
        "--params",
        str(tmp_path / "params.yaml"),
        "--classes",
        str(tmp_path / "data/classes.csv"),
        "--ontology",
        str(tmp_path / "data/ontology.json"),
        cwd=tmp_path,
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_RATE": "16000", "FAKE_CHANNELS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pipeline.stages.prepare",
        "--params",
        str(tmp_path / "params.yaml"),
        "--split",
        "eval",
        "--classes",
        str(tmp_path / "data/classes.csv"),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env)
    audio = tmp_path / "data/audio/eval"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(audio.glob("Y*.flac"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.stem for p in audio.glob("Y*.flac"))
    assert 3 <= len(done) < 12 and all(is_valid_clip(audio / f"{c}.flac") for c in done)
    assert not (tmp_path / "data/manifests/eval.csv").exists()
    before = len(fake_yt_dlp())
    _cli_prepare(tmp_path, "eval", env={"FAKE_RATE": "16000", "FAKE_CHANNELS": "1"})
    refetched = {a[-1].split("v=")[1] for a in fake_yt_dlp()[before:]}
    assert not refetched & {c[1:12] for c in done} and len(refetched) == 12 - len(done)
    assert len(read_manifest(tmp_path / "data/manifests/eval.csv")) == 12
    assert not [p for p in audio.iterdir() if not p.name.endswith(".flac") or p.name.startswith(".")]
    assert not list((tmp_path / "tmp").iterdir())  # the killed run's temporary folder was cleared


def test_cli_offline_stops_with_one_line(tmp_path, remote, fake_yt_dlp):
    tree = _tree(tmp_path, remote)
    dead = f"http://127.0.0.1:{closed_port()}"
    tree["data"]["audioset"]["urls"] = {k: f"{dead}/{k}.csv" for k in tree["data"]["audioset"]["urls"]}
    write_params(tmp_path / "params.yaml", tree)
    proc = run_module(
        "pipeline.stages.metadata",
        "--params",
        str(tmp_path / "params.yaml"),
        "--classes",
        str(tmp_path / "c.csv"),
        "--ontology",
        str(tmp_path / "o.json"),
        cwd=tmp_path,
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: cannot reach 127.0.0.1:") and "data.audioset.meta_dir" in lines[0]
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data/classes.csv").write_text(CLASSES)
    proc = _cli_prepare(tmp_path, "train", "--set", "data.dataset=audioset", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "balanced_train_segments.csv" in lines[0]
    assert "cannot reach" in lines[0] and "copy" in lines[0]
    # metadata on disk, but YouTube unreachable: yt-dlp's network errors stop the run, saying what to do
    (fake_yt_dlp.state / "behaviour.json").write_text(
        json.dumps(
            {
                y: ["err:Unable to download API page: <urlopen error [Errno -3] Temporary failure in name resolution>"]
                for y in (OK1, OK2, FLAKY, PRIVATE, GONE, HANG, OK3, OK4)
            }
        )
    )
    write_params(tmp_path / "params.yaml", _tree(tmp_path, remote, concurrency=1))
    proc = _cli_prepare(tmp_path, "train", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "cannot reach YouTube" in lines[0] and "data.audioset.source=local" in lines[0]
    assert len(fake_yt_dlp()) <= 2 * (OFFLINE_AFTER + 1)  # it gave up early

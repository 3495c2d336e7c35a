"""AudioSet acquisition, offline: metadata over HTTP from a server on 127.0.0.1, audio from a fake
`yt-dlp` executable on PATH (the real download code runs; only the remote end is fake)."""

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

from pipeline.core.params import load_params
from pipeline.core.shards import shard_path, shard_slice
from pipeline.data import audioset
from pipeline.data.audio import AudioProblem, is_valid_clip
from pipeline.data.audioset import Segment, parse_segments, stratified_holdout
from pipeline.data.datasets import Item, Rejected, class_metadata, list_split
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import merge_shards, prepare_split, write_outputs
from tests.conftest import REPO, run_module, write_params
from tests.data.test_download import closed_port, serve

CLASSES = (
    'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n'
    '2,/m/04rlf,"Music"\n3,/m/0jbk,"Animal"\n'
)
ONTOLOGY = [
    {"id": "/m/09x0r", "name": "Speech", "child_ids": ["/m/05zppz"]},
    {"id": "/m/05zppz", "name": "Male speech, man speaking", "child_ids": []},
    {"id": "/m/04rlf", "name": "Music", "child_ids": []},
    {"id": "/m/0jbk", "name": "Animal", "child_ids": []},
]
HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=8, num_segs=8, num_unique_labels=4, num_positive_labels=9\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)
# 11-character ids; the fake's behaviour per id is in BEHAVIOUR
OK1, OK2, OK3, OK4 = "--PJHxphWEs", "-0Bn6jy-8Xw", "a1b2c3d4e5F", "Zz_9-8y7x6W"
FLAKY, PRIVATE, GONE, HANG = "flakyflaky1", "privateVid1", "unavailabl1", "hanghanghan"
BEHAVIOUR = {
    FLAKY: ["err:Unable to download webpage: HTTP Error 503: Service Unavailable", "ok"],
    PRIVATE: ["err:Private video. Sign in if you've been granted access to this video"],
    GONE: [
        "err:Video unavailable. This video is no longer available because the YouTube account "
        "associated with this video has been terminated."
    ],
    HANG: ["hang"],
}
BALANCED = HEADER + "".join(
    f'{y}, {s:.3f}, {s + 10:.3f}, "{l}"\n'
    for y, s, l in [
        (OK1, 5, "/m/09x0r,/m/05zppz"),
        (OK2, 0, "/m/04rlf"),
        (FLAKY, 2, "/m/09x0r"),
        (PRIVATE, 0, "/m/0jbk"),
        (GONE, 1, "/m/04rlf"),
        (HANG, 0, "/m/09x0r"),
        (OK3, 3, "/m/0jbk"),
        (OK4, 0.5, "/m/04rlf,/m/0jbk"),
    ]
)
BALANCED += 'abc;rm -rf /x, 0.000, 10.000, "/m/09x0r"\n'  # line 12: a hostile id, never passed on
EVAL = HEADER + f'{OK3}, 4.000, 14.000, "/m/0jbk"\n{OK1}, 0.000, 10.000, "/m/09x0r"\n'

FAKE_YT_DLP = """\
#!{python}
# A fake yt-dlp: logs its argument list, then acts as BEHAVIOUR[id] says (one action per call).
import json, os, sys, time, wave
state = os.environ["FAKE_YTDLP_STATE"]
argv = sys.argv[1:]
with open(os.path.join(state, "calls.log"), "a") as log:
    log.write(json.dumps(argv) + "\\n")
ytid = argv[argv.index("--") + 1].split("v=", 1)[1]
plan = json.load(open(os.path.join(state, "behaviour.json"))).get(ytid, ["ok"])
counter = os.path.join(state, ytid + ".calls")
n = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
action = plan[min(n, len(plan) - 1)]
if action == "hang":
    time.sleep(60)
if action.startswith("err:"):
    sys.stderr.write("ERROR: [youtube] %s: %s\\n" % (ytid, action[4:]))
    sys.exit(1)
if action == "slow":
    time.sleep(0.4)
# the "video": 20 s, level 0.03 * k during second k, so a cut shows where it came from
rate, channels = int(os.environ.get("FAKE_RATE", "22050")), int(os.environ.get("FAKE_CHANNELS", "2"))
first, last = 0.0, 20.0
if "--download-sections" in argv:  # yt-dlp + ffmpeg fetch only the section
    first, last = (float(x) for x in argv[argv.index("--download-sections") + 1].lstrip("*").split("-"))
out = argv[argv.index("-o") + 1].replace("%(ext)s", "wav")
frames, i, end = bytearray(), int(round(first * rate)), int(round(last * rate))
while i < end:  # one block per second of the "video"
    n = min(end, (i // rate + 1) * rate) - i
    frames += int(32767 * 0.03 * (i // rate)).to_bytes(2, "little", signed=True) * channels * n
    i += n
with wave.open(out, "wb") as w:
    w.setnchannels(channels); w.setsampwidth(2); w.setframerate(rate); w.writeframes(bytes(frames))
"""


# every request goes to the test's own 127.0.0.1 server, never through a proxy
pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def remote():
    files = {
        "csv/class_labels_indices.csv": CLASSES.encode(),
        "ontology.json": json.dumps(ONTOLOGY).encode(),
        "csv/balanced_train_segments.csv": BALANCED.encode(),
        "csv/eval_segments.csv": EVAL.encode(),
        "csv/unbalanced_train_segments.csv": HEADER.encode(),
    }
    with serve(files) as server:
        yield server


@pytest.fixture
def fake_yt_dlp(tmp_path, monkeypatch):
    """A fake yt-dlp first on PATH; returns a function giving the logged argument lists."""
    bin_dir, state = tmp_path / "fakebin", tmp_path / "ytdlp-state"
    bin_dir.mkdir()
    state.mkdir()
    exe = bin_dir / "yt-dlp"
    exe.write_text(FAKE_YT_DLP.replace("{python}", sys.executable))
    exe.chmod(0o755)
    (state / "behaviour.json").write_text(json.dumps(BEHAVIOUR))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_YTDLP_STATE", str(state))

    def calls():
        log = state / "calls.log"
        return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []

    calls.state, calls.bin = state, bin_dir
    return calls


def _tree(tmp_path, remote, **audioset_cfg) -> dict:
    urls = {
        "class_labels_indices": remote.url("csv/class_labels_indices.csv"),
        "ontology": remote.url("ontology.json"),
        "balanced_train": remote.url("csv/balanced_train_segments.csv"),
        "unbalanced_train": remote.url("csv/unbalanced_train_segments.csv"),
        "eval": remote.url("csv/eval_segments.csv"),
    }
    cfg = {
        "urls": urls,
        "ffmpeg": "",
        "concurrency": 3,
        "rate_limit": 0,
        "retries": 1,
        "backoff_s": 0.01,
        "timeout_s": 1.0,
        "tmp_dir": str(tmp_path / "tmp"),
        "val_fraction": 0.2,
        **audioset_cfg,
    }
    return {
        "data": {"dataset": "audioset", "root": str(tmp_path / "data"), "audioset": cfg},
        "tracking": {"enabled": False},
    }


def _params(tmp_path, remote, **cfg):
    return load_params(write_params(tmp_path / "params.yaml", _tree(tmp_path, remote, **cfg)))


def _prepare(params, split, tmp_path, shard=(0, 1)):
    classes, _ = class_metadata(params)
    listing = list_split(params, split, classes)
    return prepare_split(
        listing,
        dataset="audioset",
        audio_dir=tmp_path / "data/audio" / split,
        root=tmp_path / "data",
        on_bad="skip",
        shard=shard,
        progress=False,
    )


def test_segment_csv_parsing_good_and_malformed_rows(tmp_path):
    path = tmp_path / "segments.csv"
    path.write_text(
        HEADER
        + "\n".join(
            [
                f'{OK1}, 30.000, 40.000, "/m/09x0r,/m/05zppz"',  # line 4
                f'{OK2},0,10,"/m/04rlf"',  # line 5: no spaces is fine too
                f"{OK3}, 30.000, 40.000",  # 6: 3 fields
                'abc;rm -rf /x, 0.000, 10.000, "/m/09x0r"',  # 7: hostile id
                f'{OK4}, thirty, 40.000, "/m/09x0r"',  # 8
                f'{OK4}, 40.000, 30.000, "/m/09x0r"',  # 9: end before start
                f'{OK4}, 0.000, 10.000, ""',  # 10: no labels
                f'{OK4}, 0.000, 10.000, "/m/banjo"',  # 11: not a class
                "",
                "# a comment",
            ]
        )
        + "\n"
    )
    rows = parse_segments(path, "balanced_train", {"/m/09x0r", "/m/05zppz", "/m/04rlf"})
    good = [r for r in rows if isinstance(r, Segment)]
    assert [(s.ytid, s.start, s.end, s.labels, s.clip_id) for s in good] == [
        (OK1, 30.0, 40.0, ("/m/09x0r", "/m/05zppz"), f"Y{OK1}_30.000"),
        (OK2, 0.0, 10.0, ("/m/04rlf",), f"Y{OK2}_0.000"),
    ]
    bad = [r for r in rows if isinstance(r, Rejected)]
    assert [(r.reason, r.source.rsplit(" ", 1)[1]) for r in bad] == [
        ("malformed_row", "6"),
        ("malformed_row", "7"),
        ("malformed_row", "8"),
        ("malformed_row", "9"),
        ("empty_labels", "10"),
        ("unknown_label", "11"),
    ]
    assert all(r.detail.startswith(f"{path} line ") and "\n" not in r.detail for r in bad)
    assert "not 11 characters" in bad[1].detail


def test_metadata_is_downloaded_once_over_http(tmp_path, remote):
    params = _params(tmp_path, remote)
    classes, ontology = class_metadata(params)
    assert classes.mids == ("/m/09x0r", "/m/05zppz", "/m/04rlf", "/m/0jbk") and ontology == ONTOLOGY
    meta = tmp_path / "data/downloads/audioset"
    assert (meta / "class_labels_indices.csv").read_text() == CLASSES
    listing = list_split(params, "eval", classes)
    assert [e.clip_id for e in listing.entries] == [f"Y{OK3}_4.000", f"Y{OK1}_0.000"]
    class_metadata(params)
    list_split(params, "eval", classes)
    assert Counter(p for p, _ in remote.requests) == {
        "/csv/class_labels_indices.csv": 1,
        "/ontology.json": 1,
        "/csv/eval_segments.csv": 1,
    }


def test_metadata_command_fetches_everything_and_counts(tmp_path, remote, capsys):
    write_params(tmp_path / "params.yaml", _tree(tmp_path, remote, val_fraction=0.25))
    audioset.main(["--params", str(tmp_path / "params.yaml")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("4 classes, 4 ontology entries") and out[1:] == [
        "train: 6 segments (1 rows rejected)",
        "val: 2 segments (0 rows rejected)",
        "eval: 2 segments (0 rows rejected)",
    ]


def test_params_need_a_local_dir_for_local_clips(tmp_path):
    from pipeline.core.params import ParamsError

    path = write_params(tmp_path / "p.yaml", {"data": {"dataset": "audioset", "audioset": {"source": "local"}}})
    with pytest.raises(ParamsError, match="data.audioset.source=local needs data.audioset.local_dir"):
        load_params(path)
    with pytest.raises(ParamsError, match="data.audioset.concurrency"):
        load_params(path, ["data.audioset.source=download", "data.audioset.concurrency=0"])
    assert load_params(REPO / "presets/audioset_full.yaml").data.audioset.unbalanced is True
    assert load_params(REPO / "presets/audioset_balanced.yaml").data.audioset.unbalanced is False


def test_validation_holdout_is_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    sizes = {"rare2": 2, "rare3": 3, "c10": 10, "c40": 40, "c200": 200, "single": 1}
    labels = []
    for name, count in sizes.items():
        labels += [(name,) for _ in range(count)]
    labels += [tuple(rng.choice(["c10", "c40", "c200"], size=2, replace=False)) for _ in range(100)]
    keys = [f"clip{i:04d}" for i in range(len(labels))]
    held = stratified_holdout(keys, labels, 0.1, seed=0)
    counts, in_val = Counter(l for ls in labels for l in ls), Counter(l for i in held for l in labels[i])
    for name in sizes:
        if counts[name] >= 2:
            assert 1 <= in_val[name] < counts[name], name  # represented, and still in train
    assert in_val["single"] == 0
    assert abs(in_val["c200"] / counts["c200"] - 0.1) < 0.05
    assert abs(len(held) - 0.1 * len(keys)) <= 3
    # deterministic, independent of input order, and the seed matters
    assert stratified_holdout(keys, labels, 0.1, seed=0) == held
    order = rng.permutation(len(keys))
    again = stratified_holdout([keys[i] for i in order], [labels[i] for i in order], 0.1, seed=0)
    assert {keys[order[j]] for j in again} == {keys[i] for i in held}
    assert stratified_holdout(keys, labels, 0.1, seed=1) != held


def test_train_and_val_partition_the_balanced_list(tmp_path, remote):
    params = _params(tmp_path, remote, val_fraction=0.25)
    classes, _ = class_metadata(params)
    train, val = list_split(params, "train", classes), list_split(params, "val", classes)
    train_ids = {e.clip_id for e in train.entries if isinstance(e, Item)}
    val_ids = {e.clip_id for e in val.entries}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 8 and len(val_ids) == 2
    assert all(isinstance(e, Item) for e in val.entries)
    rejected = [e for e in train.entries if isinstance(e, Rejected)]
    assert [(r.reason, r.source.endswith("line 12")) for r in rejected] == [("malformed_row", True)]
    assert {e.clip_id for e in list_split(params, "val", classes).entries} == val_ids  # deterministic
    both = _params(tmp_path, remote, val_fraction=0.25, unbalanced=True)
    assert len(list_split(both, "train", classes).entries) == len(train.entries)  # unbalanced list is empty here
    assert "/csv/unbalanced_train_segments.csv" in {p for p, _ in remote.requests}


def test_val_eval_trains_on_the_whole_pool_and_validates_on_eval(tmp_path, remote):
    """data.audioset.val: eval, the official recipe: no hold-out, val lists the eval segments."""
    params = _params(tmp_path, remote, val="eval")
    classes, _ = class_metadata(params)
    train = list_split(params, "train", classes)
    val, eval_ = list_split(params, "val", classes), list_split(params, "eval", classes)
    holdout = _params(tmp_path, remote, val_fraction=0.25)
    pool = {e.clip_id for s in ("train", "val") for e in list_split(holdout, s, classes).entries if isinstance(e, Item)}
    assert {e.clip_id for e in train.entries if isinstance(e, Item)} == pool and len(pool) == 8
    assert [e.clip_id for e in val.entries] == [e.clip_id for e in eval_.entries] and val.entries


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
    fetcher = audioset.Fetcher(_params(tmp_path, remote))
    started = []
    monkeypatch.setattr(audioset.subprocess, "Popen", lambda *a, **k: started.append(a) or 1 / 0)
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


def test_local_directory_source_with_templates(tmp_path, remote):
    local = tmp_path / "clips"
    local.mkdir()
    t = np.arange(441000) / 44100
    sf.write(str(local / f"{OK3}_4.000_14.000.flac"), np.stack([np.sin(t), np.cos(t)], 1) * 0.1, 44100)
    params = _params(tmp_path, remote, source="local", local_dir=str(local))
    manifest, report = _prepare(params, "eval", tmp_path)
    assert [e.clip_id for e in manifest] == [f"Y{OK3}_4.000"]
    assert report.skipped_by_reason == {"missing_file": 1} and f"{OK1}_0.000_10.000.flac" in report.skips[0]["detail"]
    info = sf.info(str(tmp_path / "data/audio/eval" / f"Y{OK3}_4.000.flac"))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 160000)
    # whole videos named Y<id>.wav, cut here
    videos = tmp_path / "videos"
    videos.mkdir()
    level = (np.arange(20 * 8000) // 8000 * 0.03).astype(np.float32)
    sf.write(str(videos / f"Y{OK1}.wav"), level, 8000)
    sf.write(str(videos / f"Y{OK3}.wav"), level, 8000)
    params = _params(
        tmp_path, remote, source="local", local_dir=str(videos), local_template="Y{ytid}.wav", local_cut=True
    )
    manifest, report = _prepare(params, "eval", tmp_path / "second")
    assert report.written == 2
    wave, _ = sf.read(str(tmp_path / "second/data/audio/eval" / f"Y{OK3}_4.000.flac"))
    assert len(wave) == 160000 and np.allclose(wave[20000:28000], 0.15, atol=2e-3)


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


def test_rate_limit_spaces_the_calls():
    import threading

    limiter, stop = audioset.RateLimiter(20.0), threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=limiter.wait, args=(stop,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 0.24  # 6 starts at 20/s: the last one 0.25 s after the first


def _cli_prepare(tmp_path, split, *extra, env=None, check=True):
    return run_module(
        "pipeline.stages.prepare",
        "--params",
        str(tmp_path / "params.yaml"),
        "--split",
        split,
        "--classes",
        str(tmp_path / "data/classes.csv"),
        "--no-progress",
        *extra,
        cwd=tmp_path,
        env=env,
        check=check,
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
    assert len(fake_yt_dlp()) <= 2 * (audioset.OFFLINE_AFTER + 1)  # it gave up early


def test_ytid_with_a_trailing_newline_is_rejected():
    from pipeline.data.audioset import valid_ytid

    assert valid_ytid("abcdefghijk") and not valid_ytid("abcdefghijk\n") and not valid_ytid("abc;rm -rf /x")


def test_a_model_chosen_on_eval_is_marked_in_eval_json_and_the_table(tmp_path):
    """With data.audioset.val: eval the train stage picks best.pt on eval: its eval number is never
    reported as a clean one (eval.json: chosen_on_eval; the table: a starred note)."""
    from pipeline.data.classes import ClassList
    from pipeline.evaluation.evaluate import Entry, Evaluation, Split, metrics_document, summary_table
    from pipeline.evaluation.score import evaluate

    paper = load_params(REPO / "presets" / "audioset_balanced.yaml")
    holdout = load_params(REPO / "presets" / "audioset_balanced.yaml", ["data.audioset.val=holdout"])
    assert paper.data.audioset.val == "eval" and paper.data.validates_on_eval and not holdout.data.validates_on_eval
    classes = ClassList(("/m/a", "/m/b"), ("a", "b"))
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.uint8)
    split = Split("eval", tmp_path / "eval.h5", ["c0", "c1", "c2", "c3"], labels)
    scores = {"eval": np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.3]], np.float32)}
    entries = {
        "seed-1/best": Entry("seed-1/best", "best", 1, 10, scores, {"epoch": 3, "chosen_on_eval": True}),
        "seed-1/last": Entry("seed-1/last", "last", 1, 10, scores, {"epoch": 4}),
    }
    for entry in entries.values():
        entry.metrics["eval"] = evaluate(labels, scores["eval"], classes.mids)
    result = Evaluation([split], classes, entries, [], [])
    doc = metrics_document(result)
    assert doc["seed-1/best"]["chosen_on_eval"] is True and "chosen_on_eval" not in doc["seed-1/last"]
    table = summary_table(result, split)
    assert "seed-1/best (epoch 3, chosen on eval*)" in table and "not a clean eval number" in table
    assert "seed-1/last (epoch 4)" in table

"""AudioSet acquisition, offline: metadata over HTTP from a server on 127.0.0.1, audio from a fake
`yt-dlp` executable on PATH (the real download code runs; only the remote end is fake).

This module holds those fakes (`remote`, `fake_yt_dlp` and the helpers below, shared by the
tests/data/test_audioset_*.py modules) and the tests of the plug-in surface (pipeline.data.audioset:
fetch, check, list_split, validates_on_eval)."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import numpy as np
import pytest

from pipeline.core.metrics import evaluate
from pipeline.core.schema import ParamsError
from pipeline.data import audioset
from pipeline.data.classes import ClassList
from pipeline.data.listing import Item, Rejected
from pipeline.data.params import load_params
from pipeline.data.prepare import prepare_split
from pipeline.data.registry import class_metadata, list_split
from pipeline.evaluation.evaluate import Entry, Evaluation, Split, metrics_document, summary_table
from tests.conftest import REPO, run_module, write_params
from tests.data.test_download import serve

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


def test_metadata_command_fetches_everything_and_counts(tmp_path, remote):
    """`fetch` (what `python -m pipeline.data` runs first) downloads the metadata every split needs, so
    counting the splits afterwards (the command's own job) asks the server for nothing more."""
    params = _params(tmp_path, remote, val_fraction=0.25)
    out = audioset.fetch(params.data.shared, params.data.audioset)
    assert len(out) == 1 and out[0].startswith("4 classes, 4 ontology entries")
    assert out[0].endswith(f"metadata in {tmp_path / 'data/downloads/audioset'}")
    fetched = Counter(p for p, _ in remote.requests)
    assert fetched == {
        "/csv/class_labels_indices.csv": 1,
        "/ontology.json": 1,
        "/csv/balanced_train_segments.csv": 1,
        "/csv/eval_segments.csv": 1,
    }
    classes, _ = class_metadata(params)
    counts = {}
    for split in params.data.splits:
        entries = list_split(params, split, classes).entries
        rejected = sum(isinstance(e, Rejected) for e in entries)
        counts[split] = (len(entries) - rejected, rejected)
    assert counts == {"train": (6, 1), "val": (2, 0), "eval": (2, 0)}
    assert Counter(p for p, _ in remote.requests) == fetched


def test_params_need_a_local_dir_for_local_clips(tmp_path):
    path = write_params(tmp_path / "p.yaml", {"data": {"dataset": "audioset", "audioset": {"source": "local"}}})
    with pytest.raises(ParamsError, match="data.audioset.source=local needs data.audioset.local_dir"):
        load_params(path)
    with pytest.raises(ParamsError, match="data.audioset.concurrency"):
        load_params(path, ["data.audioset.source=download", "data.audioset.concurrency=0"])
    assert load_params(REPO / "presets/audioset_full.yaml").data.audioset.unbalanced is True
    assert load_params(REPO / "presets/audioset_balanced.yaml").data.audioset.unbalanced is False


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


def test_a_model_chosen_on_eval_is_marked_in_eval_json_and_the_table(tmp_path):
    """With data.audioset.val: eval the train stage picks best.pt on eval: its eval number is never
    reported as a clean one (eval.json: chosen_on_eval; the table: a starred note)."""
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

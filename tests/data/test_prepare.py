import json
import signal
import subprocess
import sys
import time
from collections import Counter

import soundfile as sf

from pipeline.data.audio import is_valid_clip
from pipeline.data.manifest import read_manifest
from tests.conftest import REPO, run_module, write_params


def _prepare(tmp_path, params, split, *extra, check=True):
    data = tmp_path / "data"
    return run_module(
        "pipeline.stages.prepare",
        "--params",
        str(params),
        "--split",
        split,
        "--classes",
        str(data / "classes.csv"),
        "--no-progress",
        *extra,
        cwd=tmp_path,
        check=check,
    )


def _metadata(tmp_path, params):
    data = tmp_path / "data"
    run_module(
        "pipeline.stages.metadata",
        "--params",
        str(params),
        "--classes",
        str(data / "classes.csv"),
        "--ontology",
        str(data / "ontology.json"),
        cwd=tmp_path,
    )


def test_folder_dataset_skip_policy_records_every_bad_input_and_reconciles(tmp_path, folder_dataset):
    params = folder_dataset["params"]
    _metadata(tmp_path, params)
    reports = {}
    for split in ("train", "val", "eval"):
        _prepare(tmp_path, params, split)
        reports[split] = json.loads((tmp_path / "data/reports" / f"prepare_{split}.json").read_text())
    for r in reports.values():
        assert r["requested"] == r["written"] + r["skipped"] == r["written"] + len(r["skips"])
    assert sum(r["requested"] for r in reports.values()) == folder_dataset["data_rows"]
    reasons = Counter()
    for r in reports.values():
        reasons.update(r["skipped_by_reason"])
    expected = Counter(outcome for *_, outcome in folder_dataset["rows"] if outcome != "written")
    expected["malformed_row"] += 1
    assert reasons == expected
    for skip in reports["train"]["skips"]:
        assert skip["reason"] and skip["detail"] and "\n" not in skip["detail"]

    train = read_manifest(tmp_path / "data/manifests/train.csv")
    assert [(e.clip_id, e.labels) for e in train] == [
        ("good1", ("/m/09x0r",)),
        ("good2", ("/m/04rlf",)),
        ("good3", ("/m/05zppz", "/m/04rlf")),
    ]
    for entry in train + read_manifest(tmp_path / "data/manifests/eval.csv"):
        path = tmp_path / "data" / entry.audio  # audio is relative to the data root
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert abs(sf.info(str(tmp_path / "data/audio/train/good1.flac")).duration - 2.0) < 1e-3


def test_fail_policy_stops_at_the_first_bad_file_with_one_line(tmp_path, folder_dataset):
    params = folder_dataset["params"]
    _metadata(tmp_path, params)
    proc = _prepare(tmp_path, params, "train", "--set", "data.on_bad=fail", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: ") and "data.csv line 6" in lines[0] and "malformed_row" in lines[0]
    assert "data.on_bad=skip" in lines[0]
    assert not (tmp_path / "data/manifests/train.csv").exists()
    # the first bad *file* names the file
    csv = folder_dataset["root"] / "data.csv"
    csv.write_text("\n".join(l for l in csv.read_text().splitlines() if l != "too,many,fields,here") + "\n")
    proc = _prepare(tmp_path, params, "train", "--set", "data.on_bad=fail", check=False)
    assert proc.returncode == 2 and "missing.wav: file not found [missing_file]" in proc.stderr


def test_sharded_prepare_merges_to_the_unsharded_result(tmp_path, tiny_params):
    _metadata(tmp_path, tiny_params)
    whole = tmp_path / "data" / "whole"
    _prepare(
        tmp_path,
        tiny_params,
        "train",
        "--audio-dir",
        str(whole / "audio"),
        "--manifest",
        str(whole / "train.csv"),
        "--report",
        str(whole / "train.json"),
    )
    parts = tmp_path / "data" / "parts"
    for i in range(3):
        _prepare(
            tmp_path,
            tiny_params,
            "train",
            "--shard",
            f"{i}/3",
            "--audio-dir",
            str(parts / "audio"),
            "--manifest",
            str(parts / "train.csv"),
            "--report",
            str(parts / "train.json"),
        )
    assert sorted(str(p.relative_to(parts)) for p in parts.glob("train.shards/*")) == sorted(
        f"train.shards/{i}.{ext}"
        for i in range(3)
        for ext in ("csv", "json", "timing.json")  # the run's time beside
    )
    _prepare(
        tmp_path,
        tiny_params,
        "train",
        "--merge",
        "--set",
        "data.shards=[0, 1, 2]",
        "--manifest",
        str(parts / "train.csv"),
        "--report",
        str(parts / "train.json"),
    )
    merged, single = read_manifest(parts / "train.csv"), read_manifest(whole / "train.csv")
    assert [(e.clip_id, e.labels) for e in merged] == [(e.clip_id, e.labels) for e in single]
    assert len(merged) == 24
    for entry in single:
        a, _ = sf.read(str(whole / "audio" / f"{entry.clip_id}.flac"))
        b, _ = sf.read(str(parts / "audio" / f"{entry.clip_id}.flac"))
        assert (a == b).all()
    report = json.loads((parts / "train.json").read_text())
    assert (report["requested"], report["written"], report["skipped"], report["shard"]) == (24, 24, 0, "merged 3")


def test_merge_with_a_missing_shard_is_a_one_line_error(tmp_path, tiny_params):
    _metadata(tmp_path, tiny_params)
    _prepare(tmp_path, tiny_params, "val", "--shard", "0", "--set", "data.shards=2")
    proc = _prepare(tmp_path, tiny_params, "val", "--merge", "2", check=False)
    assert proc.returncode == 2 and "shard 1/2 is missing" in proc.stderr and "Traceback" not in proc.stderr


def test_interrupted_prepare_leaves_only_whole_files_and_resumes(tmp_path):
    tree = {
        "data": {"root": str(tmp_path / "data"), "demo": {"n_train": 400, "clip_seconds": 2.0}},
        "tracking": {"enabled": False},
    }
    params = write_params(tmp_path / "params.yaml", tree)
    _metadata(tmp_path, params)
    audio = tmp_path / "data/audio/train"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.stages.prepare",
        "--params",
        str(params),
        "--split",
        "train",
        "--classes",
        str(tmp_path / "data/classes.csv"),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})

    def finished_clips():  # pathlib's "*" also matches the hidden temporaries being written
        return [p for p in audio.glob("*.flac") if not p.name.startswith(".")]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(finished_clips()) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = finished_clips()
    assert 20 <= len(finished) < 400, "the run was not interrupted mid-way"
    assert all(is_valid_clip(p) for p in finished)  # no half-written clip under a final name
    assert not (tmp_path / "data/manifests/train.csv").exists()

    _prepare(tmp_path, params, "train")
    report = json.loads((tmp_path / "data/reports/prepare_train.json").read_text())
    assert report["written"] == 400 and report["reused"] >= len(finished)
    assert not [p for p in audio.iterdir() if ".tmp-" in p.name]
    assert len(read_manifest(tmp_path / "data/manifests/train.csv")) == 400


def test_demo_prepare_writes_its_own_classes_and_ontology(tmp_path, tiny_params):
    _metadata(tmp_path, tiny_params)
    classes = (tmp_path / "data/classes.csv").read_text().splitlines()
    assert classes[0] == '"index","mid","display_name"' and len(classes) > 10
    ontology = json.loads((tmp_path / "data/ontology.json").read_text())
    assert any(entry["child_ids"] for entry in ontology)
    _prepare(tmp_path, tiny_params, "eval", "--set", "data.demo.n_eval=5")
    assert len(read_manifest(tmp_path / "data/manifests/eval.csv")) == 5

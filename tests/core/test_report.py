"""The data stages' reports are committed: a rerun over the same inputs writes them byte for byte again,
and the run's wall-clock time goes to a timing file beside each, which git and DVC ignore."""

import json
import subprocess

from pipeline.core.report import StageReport, timing_path
from tests.conftest import REPO


def _report(seconds: float) -> StageReport:
    report = StageReport("train", "demo", "0/2", requested=4, written=2, seconds=seconds)
    report.add_skip("c", "c.wav", "too_short", "c.wav: 0.1 s")
    report.add_skip("b", "b.wav", "silent", "b.wav: all zeros")  # reasons in an order other than sorted
    return report


def test_a_report_is_the_same_bytes_whatever_the_run_took(tmp_path):
    first, second = tmp_path / "a" / "prepare_train.json", tmp_path / "b" / "prepare_train.json"
    _report(1.234).write(first)
    _report(98.7).write(second)
    assert first.read_bytes() == second.read_bytes()
    content = json.loads(first.read_text())
    assert "seconds" not in content and "clips_per_second" not in content
    assert list(content["skipped_by_reason"]) == ["silent", "too_short"]
    assert timing_path(first) == first.parent / "prepare_train.timing.json"
    assert json.loads(timing_path(second).read_text()) == {"seconds": 98.7, "clips_per_second": round(2 / 98.7, 3)}


def test_reading_back_restores_the_timings_and_merging_sums_them(tmp_path):
    paths = [tmp_path / "prepare_train.shards" / f"{i}.json" for i in range(2)]
    for path, seconds in zip(paths, (1.5, 2.25), strict=True):
        _report(seconds).write(path)
    parts = [StageReport.read(p) for p in paths]
    assert [p.seconds for p in parts] == [1.5, 2.25]
    merged = StageReport.merged(parts)
    assert merged.seconds == 3.75 and merged.skipped == 4 and merged.skipped_by_reason == {"silent": 2, "too_short": 2}

    timing_path(paths[0]).unlink()  # a report without its timing file (another machine's checkout) reads as 0 s
    assert StageReport.read(paths[0]).seconds == 0.0


def test_a_report_of_an_earlier_version_with_seconds_still_reads(tmp_path):
    path = tmp_path / "old.json"
    old = {**_report(0).content(), "seconds": 4.5}
    path.write_text(json.dumps(old))
    assert StageReport.read(path).seconds == 4.5


def test_git_and_dvc_ignore_the_timing_files():
    names = [
        "data/reports/prepare_train.timing.json",
        "data/reports/features_eval.shards/0.timing.json",
        "models/seed-1/history.timing.csv",
        "plots/train/seed-1.timing.csv",
        "reports/ablation.timing.json",
    ]
    ignored = subprocess.run(["git", "check-ignore", *names], cwd=REPO, capture_output=True, text=True).stdout
    assert ignored.split() == names
    committed = subprocess.run(
        ["git", "check-ignore", "data/reports/prepare_train.json", "plots/train/seed-1.csv"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert committed.stdout == ""  # the reports and plots themselves stay committed
    patterns = {line.strip() for line in (REPO / ".dvcignore").read_text().splitlines()}
    assert {"*.timing.json", "*.timing.csv"} <= patterns  # out of the hashes of DVC's outs and deps


def _data_stages(project, monkeypatch):
    """The tiny demo's metadata, prepare and features stages for the val split, two shards each and merged,
    as dvc.yaml runs them (in-process)."""
    from pipeline.stages import features, metadata, prepare

    project.mkdir()
    monkeypatch.chdir(project)
    common = ["--params", str(REPO / "presets" / "tiny.yaml"), "--set", "tracking.enabled=false"]
    classes = ["--classes", "data/classes.csv"]
    metadata.main([*classes, "--ontology", "data/ontology.json", *common])
    manifest = ["--manifest", "data/manifests/val.csv"]
    report = ["--report", "data/reports/prepare_val.json"]
    for shard in ("0", "1"):
        audio = ["--audio-dir", f"data/audio/val/shard-{shard}"]
        prepare.main(
            ["--split", "val", "--shard", shard, *classes, *audio, *manifest, *report, "--no-progress", *common]
        )
    prepare.main(["--split", "val", "--merge", *classes, *manifest, *report, *common])
    for shard in ("0", "1"):
        shard_args = [
            *["--manifest", f"data/manifests/val.shards/{shard}.csv", "--out", f"data/features/val.shards/{shard}.h5"],
            *["--report", f"data/reports/features_val.shards/{shard}.json"],
        ]
        features.main([*shard_args, *classes, "--no-progress", *common])
    out = ["--out", "data/features/val.h5", "--report", "data/reports/features_val.json"]
    features.main(["--merge", *manifest, *classes, *out, *common])
    return {
        p.relative_to(project).as_posix(): p.read_bytes()
        for p in sorted((project / "data").rglob("*"))
        if p.is_file() and ".timing." not in p.name
    }


def test_the_data_stages_write_the_same_bytes_on_a_rerun(tmp_path, monkeypatch, capsys):
    first = _data_stages(tmp_path / "a", monkeypatch)
    second = _data_stages(tmp_path / "b", monkeypatch)
    assert {"data/reports/prepare_val.json", "data/features/val.h5", "data/manifests/val.csv"} <= set(first)
    assert list(first) == list(second)
    assert [name for name in first if first[name] != second[name]] == []
    timing = json.loads((tmp_path / "b" / "data" / "reports" / "features_val.timing.json").read_text())
    assert timing["seconds"] > 0  # the merged report's time: the shards' sum
    assert " s, " in capsys.readouterr().out  # the terminal still shows the time and throughput

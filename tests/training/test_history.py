"""What a training run writes is the same bytes on a rerun: the history and the checkpoints hold no wall
clock (that goes to history.timing.csv, ignored by git and DVC), and a checkpoint's bytes do not depend
on the temporary file it was written through."""

import csv
import hashlib

import torch

from pipeline.core.report import timing_path
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.train import HISTORY_COLUMNS, TIMING_COLUMNS, train, write_history
from tests.training.test_train import _inputs, _params, tiny_data  # noqa: F401


def _row(epoch: int, seconds: float | None) -> dict:
    row = {k: 0.5 for k in HISTORY_COLUMNS} | {"epoch": epoch, "step": 2 * epoch}
    if seconds is not None:
        row |= {"seconds": seconds, "clips_per_second": 8 / seconds, "data_wait": 0.25}
    return row


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_history_has_no_timings_and_its_timing_file_has_them(tmp_path):
    first, second = tmp_path / "a" / "history.csv", tmp_path / "b" / "history.csv"
    first.parent.mkdir(), second.parent.mkdir()
    write_history(first, [_row(1, 2.0), _row(2, 4.0)])
    write_history(second, [_row(1, 3.0), _row(2, 5.0)])
    assert first.read_bytes() == second.read_bytes()
    assert first.read_text().splitlines()[0] == ",".join(HISTORY_COLUMNS)
    assert not set(TIMING_COLUMNS) & set(_read(first)[0])
    timing = _read(timing_path(second))
    assert timing_path(second).name == "history.timing.csv"
    assert [(r["epoch"], r["seconds"], r["data_wait"]) for r in timing] == [("1", "3.0", "0.25"), ("2", "5.0", "0.25")]


def test_a_resumed_run_keeps_the_timings_of_the_epochs_before_it(tmp_path):
    path = tmp_path / "history.csv"
    write_history(path, [_row(1, 2.0)])
    write_history(path, [_row(1, None), _row(2, 4.0)])  # epoch 1 read back from last.pt: no timings
    assert [(r["epoch"], r["seconds"]) for r in _read(timing_path(path))] == [("1", "2.0"), ("2", "4.0")]
    (timing_path(path)).unlink()
    write_history(path, [_row(1, None), _row(2, 4.0)])  # no timing file left: blank cells, no error
    assert [(r["epoch"], r["seconds"]) for r in _read(timing_path(path))] == [("1", ""), ("2", "4.0")]


def test_a_checkpoint_is_the_same_bytes_whatever_file_it_is_saved_to(tmp_path):
    payload = {"format": "psla-checkpoint-1", "model": {"w": torch.arange(4.0)}, "history": [{"epoch": 1}]}
    save_checkpoint(tmp_path / "a.pt", payload)
    save_checkpoint(tmp_path / "b" / "best.pt", payload)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "best.pt").read_bytes()


def test_two_runs_write_the_same_files_but_for_the_timings(tiny_data, tmp_path):  # noqa: F811
    params = _params(tiny_data)
    for name in ("a", "b"):
        train(params, _inputs(tiny_data), tmp_path / name, seed=1, progress=False)
    digests = {
        name: {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((tmp_path / name).iterdir())}
        for name in ("a", "b")
    }
    assert "history.timing.csv" in digests["a"] and "best.pt" in digests["a"]
    del digests["a"]["history.timing.csv"], digests["b"]["history.timing.csv"]
    assert digests["a"] == digests["b"]  # what DVC hashes (models/seed-<k>) and git holds (plots/train)
    last = load_checkpoint(tmp_path / "a" / "last.pt")
    assert not set(TIMING_COLUMNS) & ({k for row in last["history"] for k in row} | set(last["best"]))
    timing = _read(tmp_path / "b" / "history.timing.csv")
    assert [r["epoch"] for r in timing] == ["1", "2"] and all(float(r["seconds"]) > 0 for r in timing)

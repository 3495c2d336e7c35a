from pipeline.core.io import atomic_path, atomic_write_json, remove_stale_temporaries, temporary_path


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    except RuntimeError:
        pass
    assert target.read_text().strip().startswith("{") and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_only_this_runs_stale_temporaries_are_removed(tmp_path):
    mine, other = temporary_path(tmp_path / "c1.flac"), temporary_path(tmp_path / "c2.flac")
    mine.write_bytes(b"x"), other.write_bytes(b"y")
    (tmp_path / "c1.flac").write_bytes(b"final")
    assert mine.name.startswith(".c1.tmp-") and mine.suffix == ".flac"
    assert remove_stale_temporaries(tmp_path, {"c1.flac"}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c1.flac", other.name])  # another shard's stays

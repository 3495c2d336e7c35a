import json
import os

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi

from pipeline.core.errors import PipelineError
from pipeline.core.features_layout import CONTENT_DIGEST
from pipeline.core.params import Features
from pipeline.core.shards import shard_path
from pipeline.data.classes import ClassList
from pipeline.data.manifest import Entry, write_manifest
from pipeline.features.features import extract_features, merge_shards, normalisation_stats, relabel
from tests.conftest import run_module, tone

CLASSES = ClassList(("/m/a", "/m/b", "/m/c"), ("A", "B", "C"))
CFG = Features(num_mel_bins=128, frame_shift_ms=10.0, target_length=400)  # the paper's fbank


def _clip(root, name, seconds, seed=0):
    rng = np.random.default_rng(seed)
    wave = (tone(seconds, 16000, freq=300 + 100 * seed) + rng.normal(0, 0.05, int(round(seconds * 16000)))).astype(
        np.float32
    )
    sf.write(str(root / "audio" / f"{name}.flac"), np.clip(wave, -1, 1), 16000, subtype="PCM_16")
    return Entry(name, f"audio/{name}.flac", ("/m/a", "/m/c") if seed % 2 else ("/m/b",))


@pytest.fixture
def clips(tmp_path):
    (tmp_path / "audio").mkdir()
    return [_clip(tmp_path, f"c{i}", s, seed=i) for i, s in enumerate([3.0, 30.0, 1.0, 2.5, 4.0, 0.5, 3.3])]


def _reference_fbank(path):
    wave, _ = sf.read(str(path), dtype="float32")
    w = torch.from_numpy(wave)[None]
    return kaldi.fbank(
        w - w.mean(),
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    ).numpy()


def test_stored_fbank_is_kaldi_fbank_within_float16_rounding(tmp_path, clips):
    out = tmp_path / "f.h5"
    report = extract_features(
        clips, split="t", data_root=tmp_path, out=out, cfg=CFG, classes=CLASSES, on_bad="fail", progress=False
    )
    assert (report.requested, report.written, report.skipped) == (7, 7, 0)
    with h5py.File(out, "r") as f:
        assert f["fbank"].shape == (7, 400, 128) and f["fbank"].dtype == np.float16
        assert f["fbank"].chunks == (1, 400, 128)
        assert f["labels"].dtype == np.uint8 and f["labels"].shape == (7, 3)
        assert [c.decode() for c in f["clip_id"][:]] == [c.clip_id for c in clips]
        assert json.loads(f.attrs["class_ids"]) == list(CLASSES.mids) and f.attrs["sample_rate"] == 16000
        assert json.loads(f.attrs["fbank_options"])["window_type"] == "hanning"
        for row, entry in enumerate(clips):
            ref = _reference_fbank(tmp_path / entry.audio)
            stored = f["fbank"][row].astype(np.float32)
            kept = min(len(ref), 400)
            assert f["n_frames"][row] == kept
            np.testing.assert_allclose(stored[:kept], ref[:kept], rtol=2**-10, atol=1e-3)  # float16 rounding
            assert (stored[kept:] == 0).all()  # zero padding, as the paper pads
        assert f["n_frames"][0] == 298  # 3 s at a 10 ms shift with 25 ms frames
        assert f["n_frames"][1] == 400  # 30 s is cut to target_length
        assert list(f["labels"][1]) == [1, 0, 1]


def test_audio_shorter_than_a_frame_is_skipped_or_fails_by_policy(tmp_path, clips):
    sf.write(str(tmp_path / "audio" / "blip.flac"), np.zeros(200, np.float32), 16000)
    entries = clips[:2] + [Entry("blip", "audio/blip.flac", ("/m/a",)), Entry("gone", "audio/gone.flac", ("/m/a",))]
    report = extract_features(
        entries,
        split="t",
        data_root=tmp_path,
        out=tmp_path / "f.h5",
        cfg=CFG,
        classes=CLASSES,
        on_bad="skip",
        progress=False,
    )
    assert (report.requested, report.written, report.skipped) == (4, 2, 2)
    assert report.skipped_by_reason == {"too_short": 1, "unreadable": 1}
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["fbank"].shape[0] == 2 and [c.decode() for c in f["clip_id"][:]] == ["c0", "c1"]
    with pytest.raises(PipelineError, match=r"blip.flac: .*shorter than one 25 ms frame \[too_short\]"):
        extract_features(
            entries,
            split="t",
            data_root=tmp_path,
            out=tmp_path / "g.h5",
            cfg=CFG,
            classes=CLASSES,
            on_bad="fail",
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "f.h5"]  # no partial output, no temporary


def test_shards_merge_into_virtual_datasets_identical_to_one_file(tmp_path, clips, monkeypatch):
    whole = tmp_path / "whole.h5"
    extract_features(
        clips, split="t", data_root=tmp_path, out=whole, cfg=CFG, classes=CLASSES, on_bad="fail", progress=False
    )
    out = tmp_path / "parts" / "t.h5"
    for i in range(3):
        extract_features(
            clips,
            split="t",
            data_root=tmp_path,
            out=shard_path(out, i),
            cfg=CFG,
            classes=CLASSES,
            on_bad="fail",
            shard=(i, 3),
            progress=False,
        )
    assert merge_shards([shard_path(out, i) for i in range(3)], out) == 7
    assert out.stat().st_size < 50_000  # virtual: nothing copied
    monkeypatch.chdir(tmp_path / "audio")  # relative sources resolve against the merged file's folder
    with h5py.File(whole, "r") as a, h5py.File(out, "r") as b:
        assert b["fbank"].is_virtual
        for name in ("fbank", "n_frames", "clip_id", "labels"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
        options = {k: v for k, v in a.attrs.items() if k != CONTENT_DIGEST}
        assert options == {k: v for k, v in b.attrs.items() if k != CONTENT_DIGEST}
        digests = []
        for i in range(3):
            with h5py.File(shard_path(out, i), "r") as part:
                digests.append(part.attrs[CONTENT_DIGEST])
        assert json.loads(b.attrs[CONTENT_DIGEST]) == digests and len(set(digests + [a.attrs[CONTENT_DIGEST]])) == 4
    with pytest.raises(PipelineError, match="shard file missing"):
        merge_shards([shard_path(out, i) for i in range(4)], tmp_path / "x.h5")


def test_the_content_digest_follows_the_fbanks(tmp_path, clips):
    """A merged file's bytes must change when a shard's fbanks do, or DVC would not rerun its readers."""
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    extract_features(
        clips, split="t", data_root=tmp_path, out=first, cfg=CFG, classes=CLASSES, on_bad="fail", progress=False
    )
    extract_features(
        clips, split="t", data_root=tmp_path, out=second, cfg=CFG, classes=CLASSES, on_bad="fail", progress=False
    )
    wave, rate = sf.read(str(tmp_path / clips[0].audio), dtype="float32")
    sf.write(str(tmp_path / clips[0].audio), wave * 0.5, rate)
    third = tmp_path / "c.h5"
    extract_features(
        clips, split="t", data_root=tmp_path, out=third, cfg=CFG, classes=CLASSES, on_bad="fail", progress=False
    )
    with h5py.File(first, "r") as a, h5py.File(second, "r") as b, h5py.File(third, "r") as c:
        assert a.attrs[CONTENT_DIGEST] == b.attrs[CONTENT_DIGEST] != c.attrs[CONTENT_DIGEST]


def test_normalisation_stats_use_real_frames_only(tmp_path, clips):
    out = tmp_path / "f.h5"
    extract_features(
        clips, split="t", data_root=tmp_path, out=out, cfg=CFG, classes=CLASSES, on_bad="fail", progress=False
    )
    values = []
    with h5py.File(out, "r") as f:
        for row in range(7):
            values.append(f["fbank"][row][: f["n_frames"][row]].astype(np.float64).ravel())
    values = np.concatenate(values)
    stats = normalisation_stats(out, chunk=3)
    assert stats["values"] == values.size
    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(values.std(), rel=1e-9)


def test_features_and_stats_stages_through_their_clis(tmp_path, clips):
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    for e in clips[:3]:
        os.replace(tmp_path / e.audio, data / e.audio)
    write_manifest(data / "train.csv", clips[:3])
    (data / "classes.csv").write_text('index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B"\n2,/m/c,"C"\n')
    common = ["--set", f"data.root={data}", "--set", "tracking.enabled=false", "--set", "features.target_length=200"]
    (tmp_path / "params.yaml").write_text("{}\n")
    for i in range(2):
        run_module(
            "pipeline.stages.features",
            "--manifest",
            str(data / "train.csv"),
            "--classes",
            str(data / "classes.csv"),
            "--out",
            str(data / "train.h5"),
            "--report",
            str(data / "r.json"),
            "--shard",
            f"{i}/2",
            *common,
            cwd=tmp_path,
        )
    out = run_module(
        "pipeline.stages.features",
        "--manifest",
        str(data / "train.csv"),
        "--classes",
        str(data / "classes.csv"),
        "--out",
        str(data / "train.h5"),
        "--report",
        str(data / "r.json"),
        "--merge",
        *common,
        "--set",
        "data.shards=2",
        cwd=tmp_path,
    ).stdout
    assert "requested 3, written 3, skipped 0" in out
    assert json.loads((data / "r.json").read_text())["written"] == 3
    run_module(
        "pipeline.stages.stats",
        "--features",
        str(data / "train.h5"),
        "--out",
        str(data / "s.json"),
        *common,
        cwd=tmp_path,
    )
    computed = json.loads((data / "s.json").read_text())
    assert computed["source"] == "computed" and computed["std"] > 0
    run_module(
        "pipeline.stages.stats",
        "--features",
        str(data / "train.h5"),
        "--out",
        str(data / "p.json"),
        *common,
        "--set",
        "features.norm=paper",
        cwd=tmp_path,
    )
    assert json.loads((data / "p.json").read_text()) == {"mean": -4.6476, "std": 4.5699, "source": "paper"}


def test_relabel_references_the_fbanks_and_writes_new_labels(tmp_path, clips):
    source = tmp_path / "f.h5"
    extract_features(
        clips, split="t", data_root=tmp_path, out=source, cfg=CFG, classes=CLASSES, on_bad="fail", progress=False
    )
    enhanced = [Entry(e.clip_id, e.audio, tuple(CLASSES.mids)) if i == 0 else e for i, e in enumerate(clips)]
    out = tmp_path / "enhanced" / "f.h5"
    assert relabel(source, enhanced[::-1], CLASSES, out) == 3 - len(clips[0].labels)  # matched by clip id
    with h5py.File(source, "r") as a, h5py.File(out, "r") as b:
        assert b["fbank"].is_virtual and not b["labels"].is_virtual
        np.testing.assert_array_equal(a["fbank"][:], b["fbank"][:])
        assert list(b["labels"][0]) == [1, 1, 1] and (a["labels"][1:] == b["labels"][1:]).all()
        assert dict(a.attrs) == dict(b.attrs)
    assert out.stat().st_size < 50_000
    with pytest.raises(PipelineError, match="clip 'c6' has no row"):
        relabel(source, clips[:-1], CLASSES, tmp_path / "x.h5")

"""FSD50K acquisition, offline: a small fake release in the official Zenodo layout (split zips
included) served over HTTP from 127.0.0.1; the real download, checks and reassembly run."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import soundfile as sf

from pipeline.core.errors import PipelineError
from pipeline.data import __main__ as data_command
from pipeline.data.download import DownloadError
from pipeline.data.listing import Item, Rejected
from pipeline.data.params import load_params
from pipeline.data.prepare import prepare_split
from pipeline.data.registry import class_metadata, list_split
from pipeline.data.split_zip import CentralEntry, EndRecord
from tests.conftest import FIXTURES, run_module, write_params
from tests.data.test_download import closed_port, serve

FSD50K_CLASSES = FIXTURES / "fsd50k" / "class_labels_indices.csv"
VOCAB = [
    (0, "Accelerating_and_revving_and_vroom", "/m/07q2z82"),
    (1, "Accordion", "/m/0mkg"),
    (2, "Acoustic_guitar", "/m/042v_gx"),
    (3, "Aircraft", "/m/0k5j"),
]
DEV = [  # fname, mids, split
    ("64760", "/m/0mkg", "train"),
    ("16399", "/m/042v_gx,/m/0mkg", "train"),
    ("16401", "/m/0k5j", "val"),
    ("16402", "/m/07q2z82", "train"),
    ("20", "/m/0k5j,/m/07q2z82", "val"),
    ("21", "/m/0mkg", "train"),
]
EVAL = [("37199", "/m/0k5j"), ("175151", "/m/042v_gx,/m/0mkg")]
ONTOLOGY = [{"id": m, "name": n, "child_ids": []} for _, n, m in VOCAB]


def _wav(seconds: float, seed: int) -> bytes:
    t = np.arange(int(seconds * 44100)) / 44100
    buffer = io.BytesIO()
    sf.write(buffer, 0.2 * np.sin(2 * np.pi * (200 + 50 * seed) * t), 44100, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def split_zip(data: bytes, parts: int) -> list[bytes]:
    """What `zip -s` writes: a spanning signature, then the bytes cut into parts with per-part offsets."""
    end = EndRecord._make(EndRecord.FORMAT.unpack_from(data, data.rfind(EndRecord.SIGNATURE)))
    body = b"PK\x07\x08" + data[: end.cd_offset]
    starts = [len(body) * i // parts for i in range(parts)]
    central, pos, new_cd = data[end.cd_offset : end.cd_offset + end.cd_size], 0, b""
    while pos < len(central):
        entry = CentralEntry._make(CentralEntry.FORMAT.unpack_from(central, pos))
        size = CentralEntry.FORMAT.size + entry.name_length + entry.extra_length + entry.comment_length
        absolute = entry.offset + 4
        disk = max(i for i, s in enumerate(starts) if s <= absolute)
        entry = entry._replace(disk=disk, offset=absolute - starts[disk])
        new_cd += CentralEntry.FORMAT.pack(*entry) + central[pos + CentralEntry.FORMAT.size : pos + size]
        pos += size
    chunks = [body[s:e] for s, e in zip(starts, starts[1:] + [len(body)])]
    last = parts - 1
    chunks[-1] += new_cd + EndRecord.FORMAT.pack(
        EndRecord.SIGNATURE, last, last, end.entries, end.entries, len(new_cd), len(chunks[-1]), 0
    )
    return chunks


def _release(vocab=VOCAB, dev=DEV, extra_dev_rows="") -> dict[str, bytes]:
    vocabulary = "".join(f"{i},{n},{m}\n" for i, n, m in vocab)
    dev_csv = "fname,labels,mids,split\n" + "".join(f'{f},"x","{m}",{s}\n' for f, m, s in dev) + extra_dev_rows
    eval_csv = "fname,labels,mids\n" + "".join(f'{f},"x","{m}"\n' for f, m in EVAL)
    files = {
        "FSD50K.ground_truth.zip": _zip(
            {
                f"FSD50K.ground_truth/{k}": v.encode()
                for k, v in (("vocabulary.csv", vocabulary), ("dev.csv", dev_csv), ("eval.csv", eval_csv))
            }
        )
    }
    dev_zip = _zip({f"FSD50K.dev_audio/{f}.wav": _wav(0.3 + 0.05 * i, i) for i, (f, _, _) in enumerate(dev)})
    eval_zip = _zip({f"FSD50K.eval_audio/{f}.wav": _wav(0.4, 9 + i) for i, (f, _) in enumerate(EVAL)})
    for kind, data, parts in (("dev", dev_zip, 3), ("eval", eval_zip, 2)):
        chunks = split_zip(data, parts)
        for i, chunk in enumerate(chunks[:-1], start=1):
            files[f"FSD50K.{kind}_audio.z{i:02d}"] = chunk
        files[f"FSD50K.{kind}_audio.zip"] = chunks[-1]
    return files


def _record(files: dict[str, bytes]) -> bytes:
    entries = [{"key": k, "size": len(v), "checksum": f"md5:{hashlib.md5(v).hexdigest()}"} for k, v in files.items()]
    return json.dumps({"id": 4060432, "files": entries}).encode()


# every request goes to the test's own 127.0.0.1 server, never through a proxy
pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def zenodo():
    files = _release()
    served = {f"records/4060432/files/{k}": v for k, v in files.items()}
    served["api/records/4060432"] = _record(files)
    served["ontology.json"] = json.dumps(ONTOLOGY).encode()
    with serve(served) as remote:
        remote.release = files
        yield remote


def _tree(tmp_path, remote=None, **cfg):
    base = {"dev_parts": 2, "eval_parts": 1, "backoff_s": 0.01}
    if remote is not None:
        base.update(
            base_url=remote.url("records/4060432/files"),
            record_url=remote.url("api/records/4060432"),
            ontology_url=remote.url("ontology.json"),
        )
    return {
        "data": {"dataset": "fsd50k", "root": str(tmp_path / "data"), "fsd50k": {**base, **cfg}},
        "tracking": {"enabled": False},
    }


def _params(tmp_path, remote=None, **cfg):
    return load_params(write_params(tmp_path / "params.yaml", _tree(tmp_path, remote, **cfg)))


def _prepare_all(params, tmp_path):
    classes, ontology = class_metadata(params)
    out = {}
    for split in ("train", "val", "eval"):
        listing = list_split(params, split, classes)
        out[split] = prepare_split(
            listing,
            dataset="fsd50k",
            audio_dir=tmp_path / "data/audio" / split,
            root=tmp_path / "data",
            on_bad="skip",
            progress=False,
        )
    return classes, ontology, out


def test_release_over_http_becomes_manifests_with_the_official_split(tmp_path, zenodo):
    params = _params(tmp_path, zenodo)
    classes, ontology, out = _prepare_all(params, tmp_path)
    assert classes.mids == tuple(m for _, _, m in VOCAB) and classes.names[1] == "Accordion"
    assert ontology == ONTOLOGY
    manifests = {split: manifest for split, (manifest, _) in out.items()}
    assert [(e.clip_id, e.labels) for e in manifests["train"]] == [
        ("64760", ("/m/0mkg",)),
        ("16399", ("/m/042v_gx", "/m/0mkg")),
        ("16402", ("/m/07q2z82",)),
        ("21", ("/m/0mkg",)),
    ]
    assert [e.clip_id for e in manifests["val"]] == ["16401", "20"]  # the official validation split
    assert [e.clip_id for e in manifests["eval"]] == ["37199", "175151"]
    for manifest in manifests.values():
        for entry in manifest:
            info = sf.info(str(tmp_path / "data" / entry.audio))
            assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert abs(sf.info(str(tmp_path / "data/audio/train/16399.flac")).duration - 0.35) < 1e-3
    release = tmp_path / "data/downloads/fsd50k"
    assert (release / "FSD50K.dev_audio.unsplit.zip").is_file() and (release / "FSD50K.dev_audio.z02").is_file()
    assert not list(release.glob(".*.part"))
    # every file was fetched once; a second listing downloads nothing
    fetched = [p for p, _ in zenodo.requests if p.startswith("/records/")]
    assert sorted(fetched) == sorted(f"/records/4060432/files/{k}" for k in zenodo.release)
    count = len(zenodo.requests)
    list_split(params, "train", classes)
    class_metadata(params)
    assert len(zenodo.requests) == count


def test_damaged_download_is_caught_by_the_records_checksum(tmp_path, zenodo):
    zenodo.files["/records/4060432/files/FSD50K.eval_audio.z01"] = b"X" + zenodo.release["FSD50K.eval_audio.z01"][1:]
    params = _params(tmp_path, zenodo)
    classes, _ = class_metadata(params)
    with pytest.raises(DownloadError) as err:
        list_split(params, "eval", classes)
    assert "FSD50K.eval_audio.z01" in str(err.value) and "MD5" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "data/downloads/fsd50k/FSD50K.eval_audio.z01").exists()


def test_malformed_and_unknown_rows_are_rejected_with_their_line(tmp_path, zenodo):
    files = _release(extra_dev_rows='99,"x","/m/banjo",train\n100,"x"\n')
    release = tmp_path / "release"
    release.mkdir()
    for name, data in files.items():
        (release / name).write_bytes(data)
    params = _params(tmp_path, zenodo, release_dir=str(release), keep_archives=False)
    classes, _ = class_metadata(params)
    entries = list_split(params, "train", classes).entries
    rejected = [(e.reason, e.source.rsplit(" ", 1)[1]) for e in entries if isinstance(e, Rejected)]
    assert rejected == [("unknown_label", "8"), ("malformed_row", "9")]
    assert not list(release.glob("FSD50K.dev_audio.z0*"))  # keep_archives=false: parts gone after reassembly
    assert not [p for p, _ in zenodo.requests if "audio" in p]  # the parts were on disk already


def test_local_extracted_release_needs_no_network(tmp_path):
    release = tmp_path / "FSD50K"  # the release as most people have it: extracted, no archives
    release.mkdir()
    with zipfile.ZipFile(io.BytesIO(_release()["FSD50K.ground_truth.zip"])) as zf:
        zf.extractall(release)
    (release / "FSD50K.dev_audio").mkdir()
    for i, (fname, _, _) in enumerate(DEV):
        (release / "FSD50K.dev_audio" / f"{fname}.wav").write_bytes(_wav(0.3, i))
    (release / "ontology.json").write_text(json.dumps(ONTOLOGY))
    dead = f"http://127.0.0.1:{closed_port()}"
    params = _params(
        tmp_path, release_dir=str(release), source="local", base_url=dead, record_url=dead, ontology_url=dead
    )
    classes, _ = class_metadata(params)
    listing = list_split(params, "val", classes)
    manifest, report = prepare_split(
        listing,
        dataset="fsd50k",
        audio_dir=tmp_path / "data/audio/val",
        root=tmp_path / "data",
        on_bad="skip",
        progress=False,
    )
    assert [e.clip_id for e in manifest] == ["16401", "20"] and report.skipped == 0
    with pytest.raises(PipelineError, match="FSD50K.eval_audio: not found.*source=local"):
        list_split(params, "eval", classes)


def test_class_list_is_the_200_classes_in_vocabulary_order(tmp_path):
    with open(FSD50K_CLASSES, newline="") as handle:
        expected = [(int(r["index"]), r["display_name"], r["mid"]) for r in csv.DictReader(handle)]
    assert len(expected) == 200
    files = _release(vocab=expected)
    files = {k: v for k, v in files.items() if "audio" not in k}
    served = {f"records/4060432/files/{k}": v for k, v in files.items()}
    served["api/records/4060432"] = _record(files)
    served["ontology.json"] = json.dumps(ONTOLOGY).encode()
    with serve(served) as remote:
        params = write_params(tmp_path / "params.yaml", _tree(tmp_path, remote))
        run_module(
            "pipeline.stages.metadata",
            "--params",
            str(params),
            "--classes",
            str(tmp_path / "classes.csv"),
            "--ontology",
            str(tmp_path / "ontology.json"),
            cwd=tmp_path,
        )
    with open(tmp_path / "classes.csv", newline="") as handle:
        written = [(int(r["index"]), r["display_name"], r["mid"]) for r in csv.DictReader(handle)]
    assert written == expected


def test_cli_offline_stops_with_one_line(tmp_path):
    dead = f"http://127.0.0.1:{closed_port()}"
    params = write_params(
        tmp_path / "params.yaml",
        _tree(tmp_path, base_url=dead, record_url=f"{dead}/api", ontology_url=f"{dead}/ontology.json"),
    )
    (tmp_path / "classes.csv").write_text('index,mid,display_name\n0,/m/0mkg,"Accordion"\n')
    for module, args in (
        ("pipeline.stages.metadata", ["--classes", "c.csv", "--ontology", "o.json"]),
        ("pipeline.stages.prepare", ["--split", "train", "--classes", "classes.csv"]),
    ):
        proc = run_module(module, "--params", str(params), *args, cwd=tmp_path, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith("error: cannot reach 127.0.0.1:") and "data.fsd50k.source=local" in lines[0]


def test_data_command_gets_the_whole_release(tmp_path, zenodo, capsys):
    write_params(tmp_path / "params.yaml", _tree(tmp_path, zenodo, keep_archives=False))
    data_command.main(["--params", str(tmp_path / "params.yaml")])  # python -m pipeline.data
    release = tmp_path / "data/downloads/fsd50k"
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        f"FSD50K dev audio: {release / 'FSD50K.dev_audio.unsplit.zip'}",
        f"FSD50K eval audio: {release / 'FSD50K.eval_audio.unsplit.zip'}",
    ]
    assert lines[2].startswith("fsd50k: ") and [line.split(":")[0] for line in lines[3:]] == ["train", "val", "eval"]
    assert sorted(p.name for p in release.iterdir() if not p.name.startswith(".")) == [
        "FSD50K.dev_audio.unsplit.zip",
        "FSD50K.eval_audio.unsplit.zip",
        "FSD50K.ground_truth",
        "FSD50K.ground_truth.zip",
        "ontology.json",  # class_metadata's, for the counts
    ]


def test_items_read_straight_from_the_reassembled_zip(tmp_path, zenodo):
    params = _params(tmp_path, zenodo)
    classes, _ = class_metadata(params)
    item = next(e for e in list_split(params, "eval", classes).entries if isinstance(e, Item))
    wave, rate = item.load()
    assert rate == 44100 and wave.shape == (1, int(0.4 * 44100)) and wave.dtype == np.float32
    assert "FSD50K.eval_audio.unsplit.zip:37199.wav" in item.source

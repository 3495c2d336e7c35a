"""Label enhancement (PSLA's "L"): fidelity vs the paper's outputs, a hand-checked ontology, bad inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.predictions import load_scores_for, write_predictions
from pipeline.data.classes import ClassList, read_classes, read_ontology
from pipeline.data.manifest import read_manifest
from pipeline.labels.enhance import build_relations, class_thresholds, enhance_labels, labels_of
from pipeline.labels.weights import label_matrix
from pipeline.stages import enhance as stage
from tests.conftest import AUDIOSET_META, LABEL_FIXTURE, run_module, write_params

FIXTURE = LABEL_FIXTURE
AUDIOSET_CLASSES = AUDIOSET_META / "class_labels_indices.csv"
ONTOLOGY = AUDIOSET_META / "ontology.json"
STATS = ("mean", "median", "25", "10", "5")
TYPES = (("type1",), ("type2",), ("type1", "type2"))
VARIANTS = [(types, stat) for types in TYPES for stat in STATS]


def read_label_sets(path) -> dict[str, frozenset]:
    with open(path, newline="") as handle:
        return {r["clip_id"]: frozenset(t for t in r["labels"].split(",") if t) for r in csv.DictReader(handle)}


def official(types, stat):
    return FIXTURE / "official" / f"enhanced_{'+'.join(types)}_{stat}.csv"


def assert_same_sets(got: dict, want: dict, what: str):
    assert list(got) == list(want), f"{what}: clip ids differ"
    bad = [c for c in want if got[c] != want[c]]
    detail = (
        f"first {bad[0]}: +{sorted(got[bad[0]] - want[bad[0]])} -{sorted(want[bad[0]] - got[bad[0]])}" if bad else ""
    )
    assert not bad, f"{what}: {len(bad)} of {len(want)} clips differ; {detail}"


def run_stage(capsys, *args):
    """The stage CLI in-process (the same code path as `python -m`, without 3 s of imports)."""
    try:
        stage.main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# Fidelity: all 15 variants against the paper's published algorithm's outputs


@pytest.fixture(scope="module")
def fixture_data(teacher_scores_csv):
    classes = read_classes(AUDIOSET_CLASSES)
    entries = read_manifest(FIXTURE / "labels.csv")
    return {
        "classes": classes,
        "entries": entries,
        "labels": label_matrix(entries, classes),
        "scores": load_scores_for(teacher_scores_csv, entries, classes),
        "relations": build_relations(read_ontology(ONTOLOGY), classes),
    }


@pytest.mark.parametrize("stat", STATS)
def test_thresholds_are_numpy_statistics(fixture_data, stat):
    labels, scores = fixture_data["labels"], fixture_data["scores"]
    fn = {"mean": np.mean, "median": np.median}.get(stat, lambda v: np.percentile(v, float(stat)))
    naive = np.array(
        [fn(scores[labels[:, k] != 0, k]) if labels[:, k].any() else np.nan for k in range(labels.shape[1])]
    )
    got = class_thresholds(labels, scores, stat, chunk_rows=257)  # chunking must not change a bit
    assert np.array_equal(got, naive, equal_nan=True)


@pytest.mark.parametrize("types,stat", VARIANTS, ids=[f"{'+'.join(t)}-{s}" for t, s in VARIANTS])
def test_fidelity_library(fixture_data, types, stat):
    d = fixture_data
    result = enhance_labels(d["labels"], d["scores"], d["relations"], stat, types)
    got = {e.clip_id: frozenset(ls) for e, ls in zip(d["entries"], labels_of(result.labels, d["classes"].mids))}
    want = read_label_sets(official(types, stat))
    assert_same_sets(got, want, f"{'+'.join(types)} {stat}")
    assert result.labels_after - result.labels_before == sum(len(s) for s in want.values()) - int(d["labels"].sum())


def test_fidelity_cli(tmp_path, store_uri, teacher_scores_csv):
    """Two variants end to end through `python -m`, one with MLflow; the other 13 run in-process above."""
    params = write_params(tmp_path / "params.yaml", {"tracking": {"uri": store_uri}})
    common = [
        "--params",
        str(params),
        "--manifest",
        str(FIXTURE / "labels.csv"),
        "--classes",
        str(AUDIOSET_CLASSES),
        "--ontology",
        str(ONTOLOGY),
        "--scores",
        str(teacher_scores_csv),
    ]
    for types, stat, report in ((("type1", "type2"), "mean", tmp_path / "report.json"), (("type2",), "25", None)):
        out = tmp_path / f"enhanced_{'+'.join(types)}_{stat}.csv"
        extra = ["--report", str(report)] if report else []
        proc = run_module(
            "pipeline.stages.enhance",
            *common,
            "--out",
            str(out),
            *extra,
            "--set",
            f"labels.enhance={stat}",
            "--set",
            f"labels.types=[{','.join(types)}]",
            cwd=tmp_path,
        )
        assert len(proc.stdout.strip().splitlines()) == 1 and "3000 clips" in proc.stdout, proc.stdout
        assert_same_sets(read_label_sets(out), read_label_sets(official(types, stat)), f"CLI {'+'.join(types)} {stat}")
    assert (tmp_path / "enhanced_type2_25_report.json").is_file()  # the default report path

    # Same columns as the input, labels in class order.
    classes = read_classes(AUDIOSET_CLASSES)
    rank = classes.index_of()
    with open(tmp_path / "enhanced_type1+type2_mean.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["clip_id", "labels"]
    assert all([rank[m] for m in r[1].split(",")] == sorted(rank[m] for m in r[1].split(",")) for r in rows[1:])

    rep = json.loads((tmp_path / "report.json").read_text())
    want = read_label_sets(official(("type1", "type2"), "mean"))
    before = read_label_sets(FIXTURE / "labels.csv")
    assert rep["labels_before"] == sum(map(len, before.values()))
    assert rep["labels_after"] == sum(map(len, want.values()))
    assert rep["clips_changed"] == sum(want[c] != before[c] for c in want)
    assert rep["added_by_type"]["type1"] == rep["added_type1"] and set(rep["added_by_type"]) == {"type1", "type2"}
    assert sum(c["added"] for c in rep["added_per_class"]) == rep["added"]
    top = rep["top_pairs"]
    assert top and all(a["count"] >= b["count"] for a, b in zip(top, top[1:]))
    assert {"parent", "parent_name", "child", "child_name", "type", "count"} <= set(top[0])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    runs = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    assert len(runs) == 2 and {r.data.tags["stage"] for r in runs} == {"enhance"}
    mean_run = next(r for r in runs if r.data.tags["enhance"] == "mean")
    assert (
        mean_run.data.metrics["added"] == rep["added"] and mean_run.data.metrics["labels_after"] == rep["labels_after"]
    )
    assert [a.path for a in client.list_artifacts(mean_run.info.run_id)] == ["report.json"]


# ---------------------------------------------------------------------------------------------
# A tiny ontology checked by hand
#
#   Grand ── Parent ── Kid                 Abstract (abstract, in the vocabulary) ── Q
#      │        ├──── Zed   (no labelled clip)   (Abstract is also a child of Grand)
#      │        └──── NotInVocab ── Mid
#      └──── Abstract
#
# Vocabulary: Grand, Parent, Kid, Zed, Mid, Abstract, Q (NotInVocab is not in it).

HAND_CLASSES = ClassList(
    ("/g", "/p", "/k", "/z", "/m", "/a", "/q"), ("Grand", "Parent", "Kid", "Zed", "Mid", "Abstract", "Q, a sound")
)
HAND_ONTOLOGY = [
    {"id": "/g", "name": "Grand", "child_ids": ["/p", "/a"], "restrictions": []},
    {"id": "/p", "name": "Parent", "child_ids": ["/k", "/z", "/n"], "restrictions": []},
    {"id": "/k", "name": "Kid", "child_ids": [], "restrictions": []},
    {"id": "/z", "name": "Zed", "child_ids": [], "restrictions": ["blacklist"]},
    {"id": "/n", "name": "NotInVocab", "child_ids": ["/m"], "restrictions": []},
    {"id": "/m", "name": "Mid", "child_ids": [], "restrictions": []},
    {"id": "/a", "name": "Abstract", "child_ids": ["/q"], "restrictions": ["abstract"]},
    {"id": "/q", "name": "Q, a sound", "child_ids": [], "restrictions": []},
]
# clip: (labels, scores that differ from 0.1). With `mean`, every threshold is 0.5 (each class
# has one labelled clip scoring 0.5) except Zed's: no labelled clip, no threshold.
HAND_CLIPS = {
    "c0": (["/p"], {"/p": 0.5, "/k": 0.9, "/z": 0.99, "/g": 0.9, "/m": 0.9}),
    "c1": (["/k"], {"/k": 0.5}),
    "c2": (["/g"], {"/g": 0.5, "/p": 0.3}),
    "c3": (["/m"], {"/m": 0.5, "/p": 0.05, "/g": 0.9}),
    "c4": (["/a"], {"/a": 0.5, "/q": 0.95}),
    "c5": (["/q"], {"/q": 0.5, "/g": 0.95, "/a": 0.95}),
}
HAND_EXPECTED = {  # additions per type, worked out by hand from the rules
    "type1": {"c0": {"/k"}},  # Kid is a direct child of labelled Parent above 0.5; Zed has no threshold;
    #                           Mid is a grandchild (through NotInVocab); Q's parent is abstract
    "type2": {
        "c0": {"/g"},  # Grand is Parent's parent
        "c3": {"/g"},
    },  # Mid -> NotInVocab -> Parent -> Grand: Grand (0.9) added, Parent (0.05) not;
    #                           Q's only parent is abstract: neither Abstract nor Grand from c5
}


def hand_data(tmp_path, clips=HAND_CLIPS, extra_columns=False):
    (tmp_path / "classes.csv").write_text(
        "index,mid,display_name\n"
        + "".join(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(zip(HAND_CLASSES.mids, HAND_CLASSES.names)))
    )
    (tmp_path / "ontology.json").write_text(json.dumps(HAND_ONTOLOGY))
    index = HAND_CLASSES.index_of()
    scores = np.full((len(clips), len(HAND_CLASSES)), 0.1)
    for row, (_, overrides) in enumerate(clips.values()):
        for mid, value in overrides.items():
            scores[row, index[mid]] = value
    header = "clip_id,audio,labels,start,end\n" if extra_columns else "clip_id,labels\n"
    rows = [
        f'{c},{c}.flac,"{",".join(reversed(ls))}",0.0,10.0\n' if extra_columns else f'{c},"{",".join(ls)}"\n'
        for c, (ls, _) in clips.items()
    ]
    (tmp_path / "manifest.csv").write_text(header + "".join(rows))
    np.savetxt(tmp_path / "scores.csv", scores, delimiter=",", fmt="%.17g")
    write_params(tmp_path / "params.yaml", {"tracking": {"enabled": False}})
    return scores


def hand_args(tmp_path, out="out.csv", scores="scores.csv"):
    return [
        "--params",
        tmp_path / "params.yaml",
        "--manifest",
        tmp_path / "manifest.csv",
        "--classes",
        tmp_path / "classes.csv",
        "--ontology",
        tmp_path / "ontology.json",
        "--scores",
        tmp_path / scores,
        "--out",
        tmp_path / out,
    ]


def test_hand_relations():
    rel = build_relations(HAND_ONTOLOGY, HAND_CLASSES)
    name = dict(zip(range(7), HAND_CLASSES.names))
    children = {name[k]: {name[int(j)] for j in rel.children.targets(k)} for k in range(7)}
    ancestors = {name[k]: {name[int(j)] for j in rel.ancestors.targets(k)} for k in range(7)}
    assert children == {
        "Grand": {"Parent", "Abstract"},
        "Parent": {"Kid", "Zed"},
        "Kid": set(),
        "Zed": set(),
        "Mid": set(),
        "Abstract": set(),
        "Q, a sound": set(),
    }  # an abstract parent has no children
    assert ancestors == {
        "Grand": set(),
        "Parent": {"Grand"},
        "Kid": {"Parent", "Grand"},
        "Zed": {"Parent", "Grand"},
        "Mid": {"Parent", "Grand"},
        "Abstract": {"Grand"},
        "Q, a sound": set(),
    }  # through NotInVocab, never through Abstract


@pytest.mark.parametrize("types", TYPES, ids=["+".join(t) for t in TYPES])
def test_hand_enhancement(tmp_path, capsys, types):
    hand_data(tmp_path)
    code, out, err = run_stage(capsys, *hand_args(tmp_path), "--set", f"labels.types=[{','.join(types)}]")
    assert code == 0, err
    got = read_label_sets(tmp_path / "out.csv")
    want = {
        c: frozenset(ls) | frozenset().union(*(HAND_EXPECTED[t].get(c, set()) for t in types))
        for c, (ls, _) in HAND_CLIPS.items()
    }
    assert got == want
    added = sum(len(want[c]) - len(HAND_CLIPS[c][0]) for c in want)
    assert f"labels 6 -> {6 + added} (+{added}" in out and len(out.strip().splitlines()) == 1
    report = json.loads((tmp_path / "out_report.json").read_text())
    assert report["added_by_type"] == {t: sum(map(len, HAND_EXPECTED[t].values())) for t in types}
    pairs = {(p["type"], p["parent_name"], p["child_name"], p["count"]) for p in report["top_pairs"]}
    assert pairs == ({("type1", "Parent", "Kid", 1)} if "type1" in types else set()) | (
        {("type2", "Grand", "Parent", 1), ("type2", "Grand", "Mid", 1)} if "type2" in types else set()
    )
    zed = {c["mid"]: c for c in report["added_per_class"]}
    assert "/z" not in zed and "/q" not in zed and "/a" not in zed


def test_hand_thresholds_and_chunking():
    """Every statistic vs numpy on random data; results independent of the chunk size; a naive loop agrees."""
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 7)) < 0.2).astype(np.uint8)
    labels[:, 3] = 0  # Zed: no labelled clip
    scores = rng.random((300, 7)).astype(np.float32)
    rel = build_relations(HAND_ONTOLOGY, HAND_CLASSES)
    for stat in ("mean", "median", "25", "10", "5"):
        th = class_thresholds(labels, scores, stat, chunk_rows=13)
        assert np.isnan(th[3]) and not np.isnan(np.delete(th, 3)).any()
        big = enhance_labels(labels, scores, rel, stat, ("type1", "type2"))
        small = enhance_labels(labels, scores, rel, stat, ("type1", "type2"), chunk_rows=7)
        assert np.array_equal(big.labels, small.labels) and big.added_by_type == small.added_by_type
        assert all(np.array_equal(big.pair_counts[t], small.pair_counts[t]) for t in big.pair_counts)
        naive = labels.astype(bool)
        children, ancestors = rel.children.dense(), rel.ancestors.dense()
        for i in range(300):
            for k in np.flatnonzero(labels[i]):
                for j in np.flatnonzero(children[k] | ancestors[k]):
                    if scores[i, j] > th[j]:
                        naive[i, j] = True
        assert np.array_equal(big.labels, naive)
        assert not big.labels[:, 3].any()
    with pytest.raises(PipelineError, match="types is empty"):
        enhance_labels(labels, scores, rel, "mean", [])
    with pytest.raises(PipelineError, match=r"shape \(300, 6\)"):
        enhance_labels(labels, scores[:, :6], rel, "mean", ["type1"])
    bad = scores.copy()
    bad[5, 2] = np.nan
    with pytest.raises(PipelineError, match="clip 6 holds a non-finite score"):
        enhance_labels(labels, bad, rel, "mean", ["type1"])


def test_none_passes_through(tmp_path, capsys):
    hand_data(tmp_path, extra_columns=True)
    # No scores, no ontology: enhance none needs neither.
    code, out, err = run_stage(
        capsys,
        "--params",
        tmp_path / "params.yaml",
        "--manifest",
        tmp_path / "manifest.csv",
        "--classes",
        tmp_path / "classes.csv",
        "--out",
        tmp_path / "out.csv",
        "--set",
        "labels.enhance=none",
    )
    assert code == 0, err
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "manifest.csv").read_bytes()
    assert "labels 6 -> 6 (+0" in out
    report = json.loads((tmp_path / "out_report.json").read_text())
    assert report["enhance"] == "none" and report["added"] == 0 and report["top_pairs"] == []


def test_extra_columns_kept(tmp_path, capsys):
    hand_data(tmp_path, extra_columns=True)
    code, _, err = run_stage(capsys, *hand_args(tmp_path))
    assert code == 0, err
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["clip_id", "audio", "labels", "start", "end"]
    assert rows[1] == ["c0", "c0.flac", "/g,/p,/k", "0.0", "10.0"]  # labels in class order


def test_predictions_file_matches_csv_matrix(tmp_path, capsys):
    """An .npz matched by clip id (shuffled, one extra clip) gives exactly what the CSV matrix gives."""
    rng = np.random.default_rng(1)
    mids = HAND_CLASSES.mids
    clips = {f"r{i:03d}": (list(rng.choice(mids, rng.integers(1, 3), replace=False)), {}) for i in range(60)}
    hand_data(tmp_path, clips)
    scores = rng.random((60, 7)).astype(np.float32)
    # The CSV holds the float32 values exactly, so both files carry the same numbers.
    np.savetxt(tmp_path / "scores.csv", scores.astype(np.float64), delimiter=",", fmt="%.17g")
    order = rng.permutation(61)
    ids = np.array(list(clips) + ["extra"])[order]
    padded = np.vstack([scores, rng.random((1, 7)).astype(np.float32)])[order]
    write_predictions(tmp_path / "preds.npz", padded, ids, mids)
    for stat in ("mean", "10"):
        for scores_file, out in (("scores.csv", "a.csv"), ("preds.npz", "b.csv")):
            code, _, err = run_stage(capsys, *hand_args(tmp_path, out, scores_file), "--set", f"labels.enhance={stat}")
            assert code == 0, err
        assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
        assert (tmp_path / "a_report.json").read_text().replace("scores.csv", "X").replace("a.csv", "Y") == (
            tmp_path / "b_report.json"
        ).read_text().replace("preds.npz", "X").replace("b.csv", "Y")
    assert read_label_sets(tmp_path / "a.csv") != {c: frozenset(ls) for c, (ls, _) in clips.items()}  # did work


@pytest.mark.parametrize(
    "case",
    ["wrong_columns", "wrong_rows", "nan", "clip_mismatch", "missing_class", "types_empty", "no_scores", "no_ontology"],
)
def test_bad_input_one_line(tmp_path, capsys, case):
    scores = hand_data(tmp_path)
    extra = []
    expect = {
        "wrong_columns": "6 values, expected 7",
        "wrong_rows": "5 rows, but the manifest has 6 clips",
        "nan": "non-finite score",
        "clip_mismatch": "no scores for clip c0",
        "missing_class": "class '/q' (Q, a sound) of the class list is not in the ontology",
        "types_empty": "types must name type1 and/or type2",
        "no_scores": "pass --scores",
        "no_ontology": "pass --ontology",
    }[case]
    args = hand_args(tmp_path)
    if case == "wrong_columns":
        np.savetxt(tmp_path / "scores.csv", scores[:, :6], delimiter=",", fmt="%.17g")
    elif case == "wrong_rows":
        np.savetxt(tmp_path / "scores.csv", scores[:5], delimiter=",", fmt="%.17g")
    elif case == "nan":
        scores[3, 2] = np.nan
        np.savetxt(tmp_path / "scores.csv", scores, delimiter=",", fmt="%.17g")
    elif case == "clip_mismatch":
        write_predictions(tmp_path / "p.npz", scores, [f"x{i}" for i in range(6)], HAND_CLASSES.mids)
        args = hand_args(tmp_path, scores="p.npz")
    elif case == "missing_class":
        (tmp_path / "ontology.json").write_text(json.dumps([e for e in HAND_ONTOLOGY if e["id"] != "/q"]))
    elif case == "types_empty":
        extra = ["--set", "labels.types=[]"]
    elif case in ("no_scores", "no_ontology"):
        flag = "--scores" if case == "no_scores" else "--ontology"
        i = args.index(flag)
        del args[i : i + 2]
    code, out, err = run_stage(capsys, *args, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and expect in err, err
    assert not (tmp_path / "out.csv").exists()


def test_bad_input_through_cli(tmp_path):
    """One bad input as a user sees it: exit status 2, one line on stderr, no traceback, no output."""
    scores = hand_data(tmp_path)
    scores[2, 4] = np.nan
    np.savetxt(tmp_path / "scores.csv", scores, delimiter=",", fmt="%.17g")
    proc = run_module("pipeline.stages.enhance", *map(str, hand_args(tmp_path)), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "line 3 holds a non-finite score" in proc.stderr
    assert not (tmp_path / "out.csv").exists()


# ---------------------------------------------------------------------------------------------
# The official code's edge rules, on the real AudioSet ontology and the real FSD50K class list

# the classes fix_type1.py / fix_type2.py hard-code as never enhanced from, for FSD50K
OFFICIAL_FSD50K_SKIPPED = {"/m/09l8g", "/m/0bm0k", "/t/dd00012", "/m/09hlz4", "/t/dd00071"}
FSD50K_CLASSES = AUDIOSET_META.parent / "fsd50k" / "class_labels_indices.csv"


def test_only_exactly_abstract_nodes_are_skipped_so_song_gains_music():
    """'Musical concepts' is ["abstract", "blacklist"]: the official code keeps it as a parent, so a
    Song clip can gain Music (type 2) through it, although neither link is direct."""
    ontology = read_ontology(ONTOLOGY)
    by_id = {e["id"]: e for e in ontology}
    song, music, concepts = "/m/074ft", "/m/04rlf", "/t/dd00027"
    assert by_id[concepts]["restrictions"] == ["abstract", "blacklist"] and song in by_id[concepts]["child_ids"]
    classes = read_classes(AUDIOSET_CLASSES)
    relations = build_relations(ontology, classes)
    mids = list(classes.mids)
    assert mids.index(music) in relations.ancestors.targets(mids.index(song))
    labels = np.zeros((1, len(mids)), np.uint8)
    labels[0, mids.index(song)] = 1
    scores = np.full((1, len(mids)), 0.9, np.float32)
    result = enhance_labels(labels, scores, relations, "mean", ("type2",), thresholds=np.full(len(mids), 0.5))
    assert result.labels[0, mids.index(music)]


def test_fsd50k_skips_exactly_the_official_five_classes_as_sources(tmp_path, capsys):
    ontology = read_ontology(ONTOLOGY)
    classes = read_classes(FSD50K_CLASSES)
    from pipeline.labels.enhance import restricted_classes

    assert set(restricted_classes(ontology, classes.mids)) == OFFICIAL_FSD50K_SKIPPED
    # the default (AudioSet's recipe) enhances from every class; FSD50K's not from the five
    full = build_relations(ontology, classes)
    fsd = build_relations(ontology, classes, restricted_sources=False)
    mids = list(classes.mids)
    for k, mid in enumerate(mids):
        if mid in OFFICIAL_FSD50K_SKIPPED:
            assert len(fsd.children.targets(k)) == len(fsd.ancestors.targets(k)) == 0
        else:
            assert list(fsd.children.targets(k)) == list(full.children.targets(k))
            assert list(fsd.ancestors.targets(k)) == list(full.ancestors.targets(k))
    # the rule changes something: Domestic sounds (blacklisted) has children it would otherwise add
    assert full.children.targets(mids.index("/t/dd00071")).size
    # and the five can still be added themselves, as relatives of other labels
    skipped = {mids.index(m) for m in OFFICIAL_FSD50K_SKIPPED}
    assert skipped & (set(fsd.children.indices.tolist()) | set(fsd.ancestors.indices.tolist()))


@pytest.mark.parametrize("dataset", ["fsd50k", "demo"])
def test_enhance_stage_applies_the_fsd50k_rule_for_fsd50k_only(tmp_path, capsys, dataset):
    """Domestic sounds (blacklisted) labelled, its child Door scored high: added from it except for FSD50K."""
    classes = read_classes(FSD50K_CLASSES)
    mids = list(classes.mids)
    door = mids.index("/m/02dgv")
    scores = np.full((2, len(mids)), 0.1)
    scores[0, door], scores[1, door] = 0.9, 0.5  # Door's threshold: the mean over its labelled clip, 0.5
    (tmp_path / "manifest.csv").write_text('clip_id,labels\nc0,"/t/dd00071"\nc1,"/m/02dgv"\n')
    np.savetxt(tmp_path / "scores.csv", scores, delimiter=",", fmt="%.17g")
    write_params(tmp_path / "params.yaml", {"tracking": {"enabled": False}, "data": {"dataset": dataset}})
    args = hand_args(tmp_path)
    args[args.index("--classes") + 1], args[args.index("--ontology") + 1] = FSD50K_CLASSES, ONTOLOGY
    code, _, err = run_stage(capsys, *args)
    assert code == 0, err
    got = read_label_sets(tmp_path / "out.csv")
    assert ("/m/02dgv" in got["c0"]) == (dataset != "fsd50k")
    report = json.loads((tmp_path / "out_report.json").read_text())
    assert set(report["skipped_sources"]) == (OFFICIAL_FSD50K_SKIPPED if dataset == "fsd50k" else set())

import pytest

from pipeline.core.errors import PipelineError
from pipeline.data import folder
from pipeline.data.classes import UnknownLabel, read_classes
from pipeline.data.listing import Item, Rejected
from pipeline.data.params import load_params
from pipeline.data.registry import class_metadata, list_split
from tests.conftest import write_params


def list_folder(params, split, classes):
    """The plug-in itself, called as the registry calls it: the shared data settings and its own section."""
    return folder.list_split(params.data.shared, params.data.folder, split, classes)


def test_label_resolver_takes_mids_and_names_with_commas(audio_classes):
    resolve = read_classes(audio_classes).resolver()
    assert resolve("/m/09x0r") == ("/m/09x0r",)
    assert resolve("Male speech, man speaking") == ("/m/05zppz",)
    assert resolve("Male speech, man speaking,Music") == ("/m/05zppz", "/m/04rlf")
    assert resolve("music, /m/09x0r, Music") == ("/m/04rlf", "/m/09x0r")
    assert resolve("  ") == ()
    with pytest.raises(UnknownLabel, match="Banjo"):
        resolve("Speech, Banjo")


def test_folder_listing_reports_every_row_once_across_splits(folder_dataset):
    params = load_params(folder_dataset["params"])
    classes, ontology = class_metadata(params)
    assert len(classes) == 3 and ontology == []
    outcome = {}
    for split in params.data.splits:
        for entry in list_folder(params, split, classes).entries:
            key = entry.source.split("line ")[-1] if isinstance(entry, Rejected) else entry.source
            outcome[key] = entry.reason if isinstance(entry, Rejected) else "item"
    assert len(outcome) == folder_dataset["data_rows"]
    assert outcome["6"] == "malformed_row"
    reasons = sorted(v for v in outcome.values() if v != "item")
    assert reasons == ["duplicate_clip_id", "empty_labels", "malformed_row", "unknown_label"]


def test_folder_split_column_and_labels(folder_dataset):
    params = load_params(folder_dataset["params"])
    classes, _ = class_metadata(params)
    evals = list_folder(params, "eval", classes).entries
    assert [(e.clip_id, e.labels) for e in evals] == [("good4", ("/m/04rlf",))]
    train = [e for e in list_folder(params, "train", classes).entries if isinstance(e, Item)]
    assert ("good3", ("/m/05zppz", "/m/04rlf")) in [(e.clip_id, e.labels) for e in train]


def test_folder_without_split_column_assigns_stable_splits(tmp_path, audio_classes):
    rows = "\n".join(f"clip{i}.wav,Speech" for i in range(400))
    (tmp_path / "d.csv").write_text("audio,labels\n" + rows + "\n")
    tree = {
        "data": {
            "dataset": "folder",
            "folder": {
                "csv": str(tmp_path / "d.csv"),
                "classes": str(audio_classes),
                "val_fraction": 0.2,
                "eval_fraction": 0.1,
            },
        }
    }
    params = load_params(write_params(tmp_path / "p.yaml", tree))
    classes = read_classes(audio_classes)
    sizes = {s: len(list_folder(params, s, classes).entries) for s in params.data.splits}
    assert sum(sizes.values()) == 400
    assert 20 <= sizes["eval"] <= 60 and 50 <= sizes["val"] <= 110
    again = [e.clip_id for e in list_folder(params, "val", classes).entries]
    assert again == [e.clip_id for e in list_folder(params, "val", classes).entries]


def test_folder_csv_problems_are_one_line_errors(tmp_path, audio_classes):
    (tmp_path / "d.csv").write_text("file,labels\nx.wav,Speech\n")
    tree = {"data": {"dataset": "folder", "folder": {"csv": str(tmp_path / "d.csv"), "classes": str(audio_classes)}}}
    params = load_params(write_params(tmp_path / "p.yaml", tree))
    with pytest.raises(PipelineError, match=r"d.csv: missing column\(s\) audio"):
        list_split(params, "train", read_classes(audio_classes))
    bad_classes = tmp_path / "c.csv"
    bad_classes.write_text("name\nSpeech\n")
    with pytest.raises(PipelineError, match="c.csv: a class list needs the columns index,mid,display_name"):
        read_classes(bad_classes)

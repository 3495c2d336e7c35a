"""The dataset registry: every plug-in keeps the contract, its params section is in the schema, and a new
dataset is two modules, its params section and its plug-in, plus its name on the import lines of the schema
and of the registry (shown end to end on a copy)."""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from pipeline.core import schema
from pipeline.core.params import DataSettings, ParamsError
from pipeline.dag import stage_deps
from pipeline.data import registry
from pipeline.data.listing import Item, Listing, Rejected
from pipeline.data.params import DATASET_SECTIONS, PipelineParams, load_params, validate
from pipeline.data.registry import DATASETS
from tests.conftest import REPO, run_module, write_params


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_plugin_keeps_the_contract(name):
    plugin, section = DATASETS[name], DATASET_SECTIONS[name]
    assert plugin.NAME == section.NAME == name
    assert callable(plugin.class_metadata) and callable(plugin.list_split)
    assert issubclass(section.Section, schema.Section)
    assert section.SPLITS is None or set(section.SPLITS) <= {"train", "val", "eval"}
    assert isinstance(getattr(PipelineParams().data, name), section.Section)  # its section data.<name>, defaults


def test_the_registry_holds_the_four_datasets_and_the_schema_only_those():
    assert list(DATASETS) == list(DATASET_SECTIONS) == ["audioset", "demo", "folder", "fsd50k"]
    with pytest.raises(ParamsError, match="data.dataset.*'audioset', 'demo', 'folder' or 'fsd50k'"):
        validate({"data": {"dataset": "esc50"}}, "params.yaml")


def test_a_plugin_receives_the_shared_settings_and_its_own_section(monkeypatch):
    params = load_params("/dev/null", ["data.dataset=folder", "data.folder.csv=a.csv", "data.folder.classes=c.csv"])
    seen = []
    monkeypatch.setattr(DATASETS["folder"], "class_metadata", lambda data, cfg: seen.append((data, cfg)))
    registry.class_metadata(params)
    [(data, cfg)] = seen
    assert type(data) is DataSettings and data.root == "data" and data.splits == ["train", "val", "eval"]
    assert not hasattr(data, "folder") and cfg is params.data.folder and cfg.csv == "a.csv"


def test_a_plugins_own_checks_and_splits_are_applied(tmp_path):
    path = write_params(tmp_path / "params.yaml", {"data": {"dataset": "fsd50k", "splits": ["train", "test"]}})
    with pytest.raises(ParamsError, match="data.dataset=fsd50k has the splits train, val, eval"):
        load_params(path)
    path = write_params(tmp_path / "params.yaml", {"data": {"dataset": "audioset", "audioset": {"source": "local"}}})
    with pytest.raises(ParamsError, match="needs data.audioset.local_dir"):
        load_params(path)
    path = write_params(tmp_path / "params.yaml", {"data": {"dataset": "audioset", "audioset": {"val": "eval"}}})
    assert load_params(path).data.validates_on_eval and not PipelineParams().data.validates_on_eval


def test_data_command_counts_each_split_of_the_configured_dataset(tmp_path):
    write_params(tmp_path / "params.yaml", {"data": {"demo": {"n_train": 30, "n_val": 20, "n_eval": 25}}})
    out = run_module("pipeline.data", cwd=tmp_path).stdout
    assert "demo: 17 classes" in out
    assert "train: 30 clips (0 rows rejected)" in out and "eval: 25 clips (0 rows rejected)" in out


TOY_SECTION = textwrap.dedent(
    '''
    """The params section data.toy."""

    from pipeline.core import schema

    NAME = "toy"
    SPLITS = ("train", "val", "eval")


    class Section(schema.Section):
        clips: int = 3
        seconds: float = 1.0
    '''
)

TOY = textwrap.dedent(
    '''
    """A toy dataset: tones, two classes; one row is rejected."""

    import numpy as np

    from pipeline.data.classes import ClassList
    from pipeline.data.listing import Item, Listing, Rejected

    NAME = "toy"


    def class_metadata(data, cfg):
        return ClassList(("/t/low", "/t/high"), ("Low", "High")), []


    def list_split(data, cfg, split, classes):
        def tone(freq):
            t = np.arange(int(16000 * cfg.seconds)) / 16000
            return lambda: ((0.3 * np.sin(2 * np.pi * freq * t))[None].astype(np.float32), 16000)

        mids = classes.mids
        items = [Item(f"{split}-{i}", (mids[i % 2],), f"toy:{i}", tone(300 + 900 * (i % 2))) for i in range(cfg.clips)]
        return Listing(split, [*items, Rejected(f"{split}-x", "toy:x", "malformed_row", "toy:x: no audio")])
    '''
)


def _add_to_import_line(path, line, name):
    text = path.read_text()
    assert text.count(line) == 1, path
    path.write_text(text.replace(line, f"{line}, {name}"))


def test_a_new_dataset_is_two_modules_plus_its_name_on_two_import_lines(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "pipeline", project / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    data = project / "pipeline" / "data"
    (data / "sections" / "toy.py").write_text(TOY_SECTION)
    (data / "toy.py").write_text(TOY)
    write_params(
        project / "params.yaml",
        {"data": {"dataset": "toy", "toy": {"clips": 4}}, "tracking": {"enabled": False}},
    )
    env = {**os.environ, "PYTHONPATH": str(project)}

    def stage(*args, ok=True):
        proc = subprocess.run([sys.executable, "-m", *args], cwd=project, env=env, capture_output=True, text=True)
        assert (proc.returncode == 0) == ok, proc.stderr
        return proc

    _add_to_import_line(data / "params.py", "from pipeline.data.sections import audioset, demo, folder, fsd50k", "toy")
    # the section without its plug-in: the registry says what is missing, before any stage runs
    failed = stage("pipeline.stages.metadata", "--classes", "data/classes.csv", ok=False)
    assert "import each dataset's plug-in here and its section in pipeline/data/params.py" in failed.stderr
    _add_to_import_line(data / "registry.py", "from pipeline.data import audioset, demo, folder, fsd50k", "toy")
    # training depends on the toy's params section, not on its code
    deps = stage_deps.code_deps("pipeline.stages.train", project)
    assert "pipeline/data/sections/toy.py" in deps and "pipeline/data/toy.py" not in deps

    stage("pipeline.stages.metadata", "--classes", "data/classes.csv", "--ontology", "data/ontology.json")
    assert [r["mid"] for r in csv.DictReader(open(project / "data" / "classes.csv"))] == ["/t/low", "/t/high"]
    stage("pipeline.stages.prepare", "--split", "train", "--classes", "data/classes.csv", "--no-progress")
    manifest = list(csv.DictReader(open(project / "data" / "manifests" / "train.csv")))
    assert [row["clip_id"] for row in manifest] == ["train-0", "train-1", "train-2", "train-3"]
    report = json.loads((project / "data" / "reports" / "prepare_train.json").read_text())
    assert report["requested"] == 5 and report["written"] == 4 and report["skipped"] == 1  # counts reconcile
    # its params section is validated like any other
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.params", "--set", "data.toy.clipz=2"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown key 'data.toy.clipz'" in proc.stderr
    printed = stage("pipeline.stages.params").stdout
    assert "  toy:\n    clips: 4\n    seconds: 1.0\n" in printed


def test_listing_types_are_the_plugins_vocabulary():
    item = Item("a", ("/m/1",), "src", lambda: None)
    assert Listing("train", [item, Rejected("b", "src", "malformed_row", "detail")]).entries[0] is item

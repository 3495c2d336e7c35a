"""Every stage's code deps in dvc.yaml are the modules its command imports (pipeline/dag/stage_deps.py)."""

import subprocess
import sys
import textwrap

import yaml

from pipeline.dag import stage_deps
from tests.conftest import REPO


def test_dvc_yaml_lists_exactly_the_modules_each_stage_imports():
    problems = stage_deps.differences(REPO / "dvc.yaml", REPO)
    assert not problems, (
        "dvc.yaml's code deps are stale (fix: python -m pipeline.dag.stage_deps --write):\n" + "\n".join(problems)
    )


def test_the_modules_that_choose_and_shape_the_results_are_deps():
    """The drift that made `dvc repro` reuse stale results: best.pt is chosen by metrics.py, the
    fbank options and the schema come from features.py and config.py, and evaluate runs the model."""
    stages = stage_deps.stages(REPO / "dvc.yaml")
    for stage in ("train", "teacher"):
        assert {"pipeline/core/metrics.py", "pipeline/features/features.py", "pipeline/core/params.py"} <= set(
            stages[stage]["code"]
        )
    evaluate_code = set(stages["evaluate"]["code"])
    runs_the_model = {"pipeline/training/model.py", "pipeline/training/checkpoint.py", "pipeline/training/predict.py"}
    assert runs_the_model <= evaluate_code
    assert "pipeline/training/train.py" not in evaluate_code  # evaluating does not depend on the training loop
    for name, stage in stages.items():
        assert stage["code"][0] == stage_deps.module_file(stage["module"]), name  # the script first
        assert not set(stage["code"]) & set(stage_deps.EXEMPT), name


def test_a_plugins_download_and_decode_code_is_no_dep_of_training():
    """The params schema imports the plug-ins' params sections, never their code: editing AudioSet's fetcher
    (or any plug-in module, or the registry) reruns the stages that list data, not training; editing a
    params section reruns everything that loads params."""
    plugin_code = {
        "pipeline/data/registry.py",
        "pipeline/data/audioset/__init__.py",
        "pipeline/data/audioset/fetcher.py",
        "pipeline/data/audioset/decode.py",
        "pipeline/data/demo.py",
        "pipeline/data/folder.py",
        "pipeline/data/fsd50k.py",
    }
    sections = {f"pipeline/data/sections/{name}.py" for name in ("audioset", "demo", "folder", "fsd50k")}
    for stage in ("train", "teacher", "average", "evaluate"):
        deps = set(stage_deps.code_deps(f"pipeline.stages.{stage}"))
        assert not deps & plugin_code, (stage, sorted(deps & plugin_code))
        assert {"pipeline/data/params.py", *sections} <= deps, stage
    for stage in ("metadata", "prepare"):
        assert plugin_code <= set(stage_deps.code_deps(f"pipeline.stages.{stage}")), stage


def test_exempt_modules_exist_and_cannot_change_an_output():
    for path, why in stage_deps.EXEMPT.items():
        assert (REPO / path).is_file() and why, path
    # the package markers are left out only while they hold nothing but a docstring and constants
    for init in ("pipeline/__init__.py", "pipeline/stages/__init__.py"):
        assert stage_deps._inert(init, REPO), f"{init} holds code: it would have to be a dep of every stage"


def _package(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))


def test_closure_follows_every_import_form_and_stops_at_exempt_modules(tmp_path):
    _package(
        tmp_path,
        {
            "pipeline/__init__.py": '"""docs"""\n__version__ = "1"\n',
            "pipeline/stages/__init__.py": "from pipeline import helpers\n",  # not inert: a dep
            "pipeline/stages/run.py": """
                from pipeline.a import thing
                import pipeline.b as b

                def main():
                    from pipeline import c
                    from pipeline.core.tracking import log
                    from . import sibling
                    import importlib
                    importlib.import_module("pipeline.d")
            """,
            "pipeline/stages/sibling.py": "",
            "pipeline/a.py": "from .e import x\n",
            "pipeline/b.py": "",
            "pipeline/c.py": "",
            "pipeline/d.py": "",
            "pipeline/e.py": "import numpy\n",
            "pipeline/helpers.py": "",
            "pipeline/core/tracking.py": "from pipeline import never\n",  # exempt: its imports are not followed
            "pipeline/never.py": "",
            "pipeline/unused.py": "",
        },
    )
    assert stage_deps.code_deps("pipeline.stages.run", tmp_path) == [
        "pipeline/stages/run.py",
        *(f"pipeline/{m}.py" for m in ("a", "b", "c", "d", "e", "helpers")),
        "pipeline/stages/__init__.py",
        "pipeline/stages/sibling.py",
    ]
    assert stage_deps.import_chain("pipeline.stages.run", "pipeline/e.py", tmp_path) == (
        "pipeline/stages/run.py -> pipeline/a.py -> pipeline/e.py"
    )


def test_write_puts_back_what_is_missing_and_removes_what_is_extra(tmp_path):
    text = (REPO / "dvc.yaml").read_text()
    assert stage_deps.rewrite(text, REPO) == text  # in step: nothing to change
    stale = text.replace("      - pipeline/core/metrics.py\n", "", 1).replace(
        "      - pipeline/stages/stats.py\n", "      - pipeline/stages/stats.py\n      - pipeline/core/tracking.py\n", 1
    )
    assert stale != text
    (tmp_path / "dvc.yaml").write_text(stale)
    problems = stage_deps.differences(tmp_path / "dvc.yaml", REPO)
    assert any(
        p.startswith("teacher: missing pipeline/core/metrics.py (imported: pipeline/stages/teacher.py")
        for p in problems
    )
    assert any(p.startswith("stats: extra pipeline/core/tracking.py (exempt") for p in problems)
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.dag.stage_deps",
            "--dvc-yaml",
            str(tmp_path / "dvc.yaml"),
            "--root",
            str(REPO),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1 and "python -m pipeline.dag.stage_deps --write" in check.stderr
    assert stage_deps.rewrite(stale, REPO) == text
    assert yaml.safe_load(stage_deps.rewrite(stale, REPO)) == yaml.safe_load(text)

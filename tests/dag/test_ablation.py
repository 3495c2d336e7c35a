"""The ablation: which variants a recipe gets, the table from evaluations, and a real two-variant,
one-epoch run of DVC experiments on the tiny preset."""

import csv
import json
import os
import subprocess

import pytest

from pipeline.core.params import Params, to_yaml
from pipeline.dag.ablation import TECHNIQUES, _flatten_exp_show, build_rows, write_reports
from pipeline.data.params import load_params
from tests.conftest import REPO
from tests.workflows.test_workflows import BIN, _project_copy


def _evaluation(wa: dict[int, float], best: dict[int, float], ensemble: float) -> dict:
    out = {f"seed-{s}/wa": {"mAP": v} for s, v in wa.items()}
    out.update({f"seed-{s}/best": {"mAP": v} for s, v in best.items()})
    out["seed-ensemble"] = {"mAP": ensemble}
    out["val"] = {"seed-1/wa": {"mAP": 0.0}}  # other splits are nested: not read
    return out


def test_each_variant_switches_off_only_its_technique_and_knows_when_it_is_already_off():
    demo = Params()
    assert {v: t.switch_off(demo) for v, t in TECHNIQUES.items()} == {
        "no_pretraining": ["model.pretrained=none"],
        "no_balanced_sampling": ["sampling.balanced=false"],
        "no_specaugment": ["augment.freqm=0", "augment.timem=0"],
        "no_mixup": ["augment.mixup=0.0"],
        "no_label_enhancement": ["labels.enhance=none"],
    }
    balanced = load_params(REPO / "presets" / "audioset_balanced.yaml")  # the paper: no balanced sampler there
    assert TECHNIQUES["no_balanced_sampling"].switch_off(balanced) == []


def test_rows_means_spreads_and_differences(tmp_path):
    params = Params()  # seeds [1, 2]
    overrides = {"full": [], "no_mixup": ["augment.mixup=0.0"], "no_balanced_sampling": []}
    evaluations = {
        "full": _evaluation({1: 0.90, 2: 0.92}, {1: 0.88, 2: 0.90}, 0.94),
        "no_mixup": _evaluation({1: 0.86, 2: 0.90}, {1: 0.8, 2: 0.8}, 0.9),
    }
    rows = build_rows(params, overrides, evaluations)
    by = {r.variant: r for r in rows}
    assert list(by) == ["full", "no_balanced_sampling", "no_mixup", "no_weight_averaging", "seed_ensemble"]
    assert by["full"].mean == pytest.approx(0.91) and by["full"].spread == pytest.approx(0.0141421, rel=1e-4)
    assert by["no_mixup"].mean == pytest.approx(0.88)
    assert by["no_balanced_sampling"].mean is None and "already off" in by["no_balanced_sampling"].note
    assert by["no_weight_averaging"].mean == pytest.approx(0.89) and by["seed_ensemble"].mean == pytest.approx(0.94)

    paths = write_reports(rows, tmp_path, "make ablation", 125.0)
    table = list(csv.DictReader(paths["csv"].open()))
    assert [r["variant"] for r in table] == list(by)
    assert float(table[2]["delta"]) == pytest.approx(-0.03) and table[1]["mAP_mean"] == ""
    assert table[2]["per_seed"] == "1:0.8600 2:0.9000" and table[2]["overrides"] == "augment.mixup=0.0"
    md = paths["md"].read_text()
    assert "| - mixup | 0.8800 ± 0.0283 | -0.0300 | 2 |" in md and "Produced by `make ablation`; mAP" in md
    assert "min" not in md.splitlines()[-1]  # the duration goes beside it, not into the committed report
    assert json.loads((tmp_path / "ablation.timing.json").read_text()) == {"seconds": 125.0, "minutes": 2.1}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_experiment_metrics_are_found_in_dvc_exp_show_json():
    shown = [
        {"rev": "workspace", "name": None, "data": {"metrics": {}}},
        {
            "rev": "abc",
            "name": "main",
            "data": {"metrics": {"metrics/eval.json": {"data": {"x": 1}}}},
            "experiments": [
                {
                    "name": "t-full",
                    "revs": [
                        {
                            "name": "t-full",
                            "data": {"metrics": {"metrics/eval.json": {"data": {"seed-1/wa": {"mAP": 0.5}}}}},
                        }
                    ],
                }
            ],
        },
    ]
    found = _flatten_exp_show(shown)
    assert found["t-full"]["metrics/eval.json"] == {"seed-1/wa": {"mAP": 0.5}}


@pytest.mark.slow
def test_two_variants_one_epoch_as_dvc_experiments(tmp_path):
    project = _project_copy(tmp_path)
    params = load_params(
        REPO / "presets" / "tiny.yaml",
        [
            "train.epochs=1",
            "train.lr_decay_start=1",
            "average.wa_start=1",
            "average.wa_end=1",
            "train.seeds=[1, 2]",
            "data.shards=[0]",
        ],
    )
    (project / "params.yaml").write_text(to_yaml(params))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }

    def run(*cmd):
        proc = subprocess.run(list(cmd), cwd=project, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    run("git", "add", "-A")
    run("git", "commit", "-qm", "tiny project")
    # -o: the shared venv counts as installed. Without it make reinstalls the project from this copy
    # (its pyproject.toml is newer than the venv's stamp), and the venv's editable install would point here.
    stamp = BIN.parent / ".installed"
    run(
        "make",
        "-o",
        str(stamp),
        "ablation",
        f"VENV={BIN.parent}",
        "ABLATION_ARGS=--variants no_mixup no_specaugment --prefix t",
    )

    table = {r["variant"]: r for r in csv.DictReader((project / "reports/ablation.csv").open())}
    assert list(table) == ["full", "no_specaugment", "no_mixup", "no_weight_averaging", "seed_ensemble"]
    for variant in ("full", "no_specaugment", "no_mixup"):
        per_seed = dict(item.split(":") for item in table[variant]["per_seed"].split())
        assert set(per_seed) == {"1", "2"} and all(0.0 <= float(v) <= 1.0 for v in per_seed.values())
    # each of the three is rounded to 4 decimals on its own: up to 1.5e-4 apart
    assert float(table["no_mixup"]["delta"]) == pytest.approx(
        float(table["no_mixup"]["mAP_mean"]) - float(table["full"]["mAP_mean"]), abs=1.6e-4
    )
    assert (project / "reports/ablation.md").read_text().startswith("| technique |")
    assert (project / "reports/ablation.png").stat().st_size > 1000

    # the experiments are DVC's: named, with the overrides as their params
    shown = json.loads(run(str(BIN / "dvc"), "exp", "show", "--json", "--no-pager"))
    assert {"t-full", "t-no-mixup", "t-no-specaugment"} <= set(_flatten_exp_show(shown))

    # MLflow: one parent run, a child per row, in the project's store (not the experiments' temp copies)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("psla").experiment_id], "tags.stage = 'ablation'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and {c.data.tags["variant"] for c in children} == set(table)
    trained = client.search_runs([client.get_experiment_by_name("psla").experiment_id], "tags.stage = 'train'")
    assert len(trained) >= 2 * 3  # two seeds in each of the three experiments (the teachers too)


def test_cli_needs_two_seeds_and_params_yaml(tmp_path):
    from tests.conftest import run_module, write_params

    write_params(tmp_path / "params.yaml", {"train": {"seeds": [1]}})
    proc = run_module("pipeline.dag.ablation", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "at least 2 seeds" in proc.stderr and len(proc.stderr.splitlines()) == 1
    write_params(tmp_path / "other.yaml", {})
    proc = run_module("pipeline.dag.ablation", "--params", "other.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "run the DAG on params.yaml" in proc.stderr

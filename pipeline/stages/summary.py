"""Print what the pipeline has produced so far: clips and features per split, and the trained models.

python -m pipeline.stages.summary
"""

import csv
import json
import math
from pathlib import Path

from pipeline.core.cli import params_parser, run
from pipeline.core.metric_values import NO_POSITIVES, PERFECT, is_finite, value_text
from pipeline.data.params import load_from_args

STAGES = ("prepare", "features")


def report_table(reports_dir: Path, splits: list[str]) -> list[str]:
    lines = [f"{'stage':<9} {'split':<7} {'requested':>9} {'written':>8} {'skipped':>8}  skipped by reason"]
    for stage in STAGES:
        for split in splits:
            path = reports_dir / f"{stage}_{split}.json"
            if not path.is_file():
                lines.append(f"{stage:<9} {split:<7} (not run)")
                continue
            r = json.loads(path.read_text())
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["skipped_by_reason"].items())) or "-"
            lines.append(f"{stage:<9} {split:<7} {r['requested']:>9} {r['written']:>8} {r['skipped']:>8}  {reasons}")
    return lines


def training_table(histories: Path, seeds: list[int]) -> list[str]:
    lines = [f"{'model':<9} {'epochs':>6} {'best epoch':>10} {'val mAP':>8} {'val mAUC':>8} {'val d-prime':>11}"]
    for seed in seeds:
        path = histories / f"seed-{seed}.csv"
        if not path.is_file():
            lines.append(f"{f'seed-{seed}':<9} (not trained)")
            continue
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        # history.csv writes an undefined value as nan (or, from older runs, an empty cell) and the d-prime of
        # a perfect validation ranking as inf: the table shows n/a with the reason, or inf
        scored = [r for r in rows if is_finite(_number(r.get("val_mAP")))]
        if not scored:
            lines.append(f"{f'seed-{seed}':<9} {len(rows):>6} {'n/a':>10}  val mAP n/a ({NO_POSITIVES})")
            continue
        best = max(scored, key=lambda r: _number(r["val_mAP"]))
        lines.append(
            f"{f'seed-{seed}':<9} {len(rows):>6} {best['epoch']:>10} {value_text(_number(best['val_mAP'])):>8} "
            f"{value_text(_number(best['val_mAUC'])):>8} {value_text(_number(best['val_d_prime']), '.3f'):>11}"
        )
        if _number(best["val_d_prime"]) == math.inf:
            lines.append(f"{'':<9} val d-prime {PERFECT}")
    return lines


def _number(cell: str | None) -> float | None:
    """A history.csv cell as a float (nan, inf included); None for an empty or unreadable cell."""
    try:
        return float(cell)
    except (TypeError, ValueError):
        return None


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])

    def body(args):
        params = load_from_args(args)
        root = Path(params.data.root)
        print(f"dataset: {params.data.dataset}  (root {root}, params hash {params.digest()})")
        print("\n".join(report_table(root / "reports", params.data.splits)))
        stats = root / "features" / "stats.json"
        if stats.is_file():
            s = json.loads(stats.read_text())
            print(f"normalisation ({s['source']}): mean {s['mean']:.4f}, std {s['std']:.4f}")
        print("\n".join(training_table(Path("plots/train"), params.train.seeds)))
        if params.data.dataset == "audioset" and params.data.audioset.val == "eval":
            print("  (data.audioset.val: eval: the val columns are eval numbers, for monitoring, not results)")
        evaluation = Path("metrics/summary.txt")  # written by the evaluate stage
        if evaluation.is_file():
            print(evaluation.read_text().rstrip())

    run(body, parser, argv)


if __name__ == "__main__":
    main()

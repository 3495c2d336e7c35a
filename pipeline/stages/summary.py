"""Print what the pipeline has produced so far: clips prepared and features computed per split.

    python -m pipeline.stages.summary
"""

import json
from pathlib import Path

from pipeline.cli import load_from_args, params_parser, run

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

    run(body, parser, argv)


if __name__ == "__main__":
    main()

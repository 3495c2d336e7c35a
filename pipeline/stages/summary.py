"""Print what the pipeline has produced so far, as a table: the prepare reports per split.

    python -m pipeline.stages.summary
"""

import json
from pathlib import Path

from pipeline.cli import load_from_args, params_parser, run


def prepare_table(reports_dir: Path, splits: list[str]) -> list[str]:
    lines = [f"{'split':<8} {'requested':>9} {'written':>8} {'skipped':>8}  skipped by reason"]
    for split in splits:
        path = reports_dir / f"prepare_{split}.json"
        if not path.is_file():
            lines.append(f"{split:<8} (not prepared)")
            continue
        r = json.loads(path.read_text())
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["skipped_by_reason"].items())) or "-"
        lines.append(f"{split:<8} {r['requested']:>9} {r['written']:>8} {r['skipped']:>8}  {reasons}")
    return lines


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])

    def body(args):
        params = load_from_args(args)
        print(f"dataset: {params.data.dataset}  (root {params.data.root}, params hash {params.digest()})")
        print("\n".join(prepare_table(Path(params.data.root) / "reports", params.data.splits)))

    run(body, parser, argv)


if __name__ == "__main__":
    main()

"""Print the resolved, validated params as YAML: `python -m pipeline.stages.params --params presets/X.yaml`
(`--out params.yaml` writes them atomically; `make params` regenerates params.yaml from the schema)."""

from __future__ import annotations

from pipeline.core.cli import params_parser, run
from pipeline.core.io import atomic_write_text
from pipeline.core.params import to_yaml
from pipeline.data.params import load_from_args


def main(argv: list[str] | None = None) -> None:
    parser = params_parser("Print the resolved, validated params as YAML.")
    parser.add_argument("--out", help="write to this file instead of stdout")

    def body(args):
        text = to_yaml(load_from_args(args))
        if args.out:
            atomic_write_text(args.out, text)
        else:
            print(text, end="")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

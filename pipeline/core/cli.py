"""What every stage CLI shares: `--params FILE`, repeated `--set section.key=value`, one-line errors.

The params those options name are loaded by `pipeline.data.params.load_from_args` (the full schema sits
above core, with the dataset plug-ins' sections)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.core.errors import PipelineError


def params_parser(
    description: str,
    default: str | None = "params.yaml",
    params_help: str = "params file (default: params.yaml); presets/ holds the paper's recipes",
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=default, metavar="FILE", help=params_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one param, value parsed as YAML (repeatable), e.g. --set train.lr=1e-4",
    )
    return parser


def run(body: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Parse arguments and run `body`; a PipelineError becomes `error: ...` on stderr and exit status 2."""
    args = parser.parse_args(argv)
    try:
        body(args)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: outputs written so far are complete; rerun to continue", file=sys.stderr)
        sys.exit(130)

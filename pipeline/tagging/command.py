"""The `psla` command: what you do with a trained model, one subcommand each.

    psla tag FILE... --model models/wa/seed-1.pt [--top-k 10] [--window 10] [--hop 5]
             [--format table|json|csv] [--timeline] [--device auto|cpu|cuda] [--batch-size 16] [--no-progress]

Exit status: 0 when every file was tagged; 1 when any file could not be read (each one reported on
stderr in one line, the others still tagged); 2 for a usage error or a file that is not one of the
pipeline's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.core.cli import run
from pipeline.data.audio import AudioProblem
from pipeline.tagging.tag import check_windows, csv_header, csv_rows, format_csv, format_table, load_tagger, tag_file

TAG_HELP = """Tag audio files with a trained model (a checkpoint of the train or average stage: best.pt,
last.pt, epoch_NNN.pt, models/wa/seed-<k>.pt; it carries everything tagging needs). Any format, sample
rate, channel count and length. Each file is cut into windows of --window seconds every --hop seconds
(the last one reaches the end of the file; a file shorter than one window is one window, zero-padded
as the features stage pads clips); every class gets its max and its mean score over the windows, and
classes are ranked by max."""


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_tag(commands) -> None:
    parser = commands.add_parser("tag", help="tag audio files with a trained model", description=TAG_HELP)
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3, m4a, ...)")
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="checkpoint of the train or average stage (e.g. models/wa/seed-1.pt)",
    )
    parser.add_argument(
        "--top-k",
        type=_count,
        default=10,
        metavar="K",
        help="classes listed per file, ranked by their max score over the windows, highest first "
        "(the mean is listed beside it); with --timeline also per window, by its score "
        "(default: 10; 0: all classes)",
    )
    parser.add_argument(
        "--window",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="window length (default: 10); windows longer than the model's training clips are scored whole",
    )
    parser.add_argument(
        "--hop",
        type=_positive(float),
        default=5.0,
        metavar="SECONDS",
        help="time between window starts, at most --window (default: 5)",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table (default; per file: rank, class, mid, max, mean), json (one document), or "
        "csv (file,rank,mid,display_name,max,mean; with --timeline also start,end)",
    )
    parser.add_argument(
        "--timeline", action="store_true", help="also each window's top classes with its start and end time"
    )
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (default: a GPU when there is one, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--batch-size", type=_positive(int), default=16, metavar="N", help="windows per forward pass (default: 16)"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (one shows on a terminal for files that take over a second)",
    )
    parser.set_defaults(handler=tag)


def tag(args: argparse.Namespace) -> None:
    check_windows(args.window, args.hop)
    tagger = load_tagger(args.model, args.device)
    results, errors = [], []
    if args.format == "csv":
        sys.stdout.write(format_csv([], csv_header(args.timeline)))
    for path in args.files:
        try:
            result = tag_file(
                tagger,
                path,
                window=args.window,
                hop=args.hop,
                batch_size=args.batch_size,
                progress=not args.no_progress,
            )
        except (AudioProblem, OSError) as problem:  # this file only: the others are still tagged
            detail = problem.detail if isinstance(problem, AudioProblem) else f"{path}: {problem.strerror or problem}"
            detail = " ".join(detail.splitlines())
            errors.append({"file": path, "error": detail})
            print(f"error: {detail}", file=sys.stderr, flush=True)
            continue
        if args.format == "table":
            print(("\n" if results else "") + format_table(result, args.top_k, args.timeline), flush=True)
        elif args.format == "csv":
            sys.stdout.write(format_csv(csv_rows(result, args.top_k, args.timeline)))
            sys.stdout.flush()
        results.append(result)
    if args.format == "json":
        document = {
            "model": args.model,
            "window": args.window,
            "hop": args.hop,
            "ranked_by": "max",
            "files": [r.as_dict(args.top_k, args.timeline) for r in results],
            "errors": errors,
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    if errors:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    # OpenMP threads spin while they wait for each other: with a training run busy on the same two
    # cores, a forward pass took 18x longer (measured). Waiting passively costs about 10% on idle
    # cores (measured, 2 threads). Set before torch loads (the commands import it, not this module).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(
        prog="psla", description="Use trained PSLA models. `psla COMMAND --help` documents each command."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_tag(commands)
    try:
        run(lambda args: args.handler(args), parser, argv)
    except BrokenPipeError:  # `psla tag ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()

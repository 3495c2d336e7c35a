"""The `psla` command: what you do with a trained model, one subcommand each.

    psla tag FILE... --model MODEL [--window S] [--hop S] [--top-k 10] [--timeline]
             [--frames | --events] [--decide] [--thresholds metrics/thresholds.json | --threshold T]
             [--format table|json|csv|npz|audacity|dcase] [--out PATH] [--device auto] [--batch-size 16]
    psla export --model CKPT --format onnx|folder --out PATH [--thresholds metrics/thresholds.json]

MODEL: a checkpoint of the train or average stage, a folder or an ONNX file of `psla export`.
Exit status: 0 when every file was tagged; 1 when any file could not be read (each one reported on
stderr in one line, the others still tagged); 2 for a usage error or a model it cannot use.
"""

from __future__ import annotations

import os

# OpenMP threads spin while they wait for each other: with a training run busy on the same two
# cores, a forward pass took 18x longer (measured). Waiting passively costs about 10% on idle
# cores (measured, 2 threads). Set before torch loads (the imports below load it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402

from pipeline.core.cli import run  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.data.audio import AudioProblem  # noqa: E402
from pipeline.tagging import outputs  # noqa: E402
from pipeline.tagging.decide import thresholds_for  # noqa: E402
from pipeline.tagging.events import MAX_GAP, MIN_DURATION  # noqa: E402
from pipeline.tagging.export import add_export  # noqa: E402
from pipeline.tagging.tag import check_windows, load_tagger, tag_file  # noqa: E402

TAG_HELP = """Tag audio files with a trained model: a checkpoint of the train or average stage (best.pt,
last.pt, epoch_NNN.pt, models/wa/seed-<k>.pt), or a folder or ONNX file written by `psla export`; each
carries everything tagging needs. Any format, sample rate, channel count and length. Each file is cut
into windows of --window seconds every --hop seconds (default: the model's training clip length, and
half of it; the last window reaches the end of the file; a file shorter than one window is one window,
zero-padded as the features stage pads clips). Clip tags (the default): every class gets its max and
its mean score over the windows, and classes are ranked by max; --decide marks each present or not.
--frames: per-frame class scores (one per backbone time step, overlapping windows averaged). --events:
onset/offset events from the frame scores and per-class thresholds. docs/tagging.md shows each."""

DEFAULT_FORMAT = {"clips": "table", "frames": "csv", "events": "csv"}


def _checked(kind, expected: str, accept, rule: str):
    """An argparse type: `kind(text)`, refused unless `accept(value)` ("must be <rule>")."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


def _positive(kind):
    return _checked(kind, "a number", lambda v: v > 0, "positive")


_count = _checked(int, "a whole number", lambda v: v >= 0, "0 or more")
_seconds = _checked(float, "seconds", lambda v: v >= 0, "0 or more")
_probability = _checked(float, "a number in [0, 1]", lambda v: 0 <= v <= 1, "in [0, 1]")


def add_tag(commands) -> None:
    parser = commands.add_parser("tag", help="tag audio files with a trained model", description=TAG_HELP)
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3, m4a, ...)")
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="checkpoint of the train or average stage (e.g. models/wa/seed-1.pt), or a folder or .onnx file "
        "of psla export",
    )
    windows = parser.add_argument_group("windows")
    windows.add_argument(
        "--window",
        type=_positive(float),
        metavar="SECONDS",
        help="window length (default: the model's training clip length, 3 s in the demo, 10.56 s for the "
        "paper's AudioSet model); windows longer than the training clips are scored whole",
    )
    windows.add_argument(
        "--hop",
        type=_positive(float),
        metavar="SECONDS",
        help="time between window starts, at most --window (default: half the window)",
    )
    what = parser.add_argument_group("what to write")
    mode = what.add_mutually_exclusive_group()
    mode.add_argument(
        "--frames",
        action="store_true",
        help="per-frame class scores (file,time,mid,display_name,score); csv streams the top-k classes of "
        "each frame (--top-k 0: all), json and npz hold every class",
    )
    mode.add_argument(
        "--events",
        action="store_true",
        help="sound events (onset, offset, class, score) where frame scores reach the class thresholds",
    )
    what.add_argument(
        "--decide",
        action="store_true",
        help="mark each class present when its max score reaches its threshold (needs thresholds)",
    )
    what.add_argument(
        "--top-k",
        type=_count,
        default=10,
        metavar="K",
        help="classes listed per file, ranked by their max score over the windows, highest first "
        "(the mean is listed beside it); with --timeline also per window, by its score; with --frames "
        "per frame (default: 10; 0: all classes)",
    )
    what.add_argument(
        "--timeline", action="store_true", help="also each window's top classes with its start and end time"
    )
    what.add_argument(
        "--format",
        choices=("table", "json", "csv", "npz", "audacity", "dcase"),
        help="clip tags: table (default), json or csv (file,rank,mid,display_name,max,mean; with --decide "
        "also threshold,present; with --timeline also start,end); --frames: csv (default), json or npz; "
        "--events: csv (default: file,onset,offset,mid,label,score), audacity (label track), dcase "
        "(filename onset offset event_label) or json",
    )
    what.add_argument(
        "--out",
        metavar="PATH",
        help="write there instead of stdout (atomically); needed for npz, and a folder for audacity with "
        "several files (one <stem>.txt label track each)",
    )
    decide = parser.add_argument_group("thresholds (--decide, --events)")
    source = decide.add_mutually_exclusive_group()
    source.add_argument(
        "--thresholds",
        metavar="FILE",
        help="the evaluate stage's metrics/thresholds.json (chosen on the validation split; the entry of "
        "this checkpoint is found by its sha256); default: the thresholds an exported model carries",
    )
    source.add_argument("--threshold", type=_probability, metavar="T", help="one threshold for every class")
    decide.add_argument(
        "--rule", default="f1", help="which thresholds of the file (default: f1, the F1-optimal one per class)"
    )
    decide.add_argument(
        "--min-duration",
        type=_seconds,
        default=MIN_DURATION,
        metavar="SECONDS",
        help=f"events shorter than this are dropped, after gap filling (default: {MIN_DURATION:g})",
    )
    decide.add_argument(
        "--max-gap",
        type=_seconds,
        default=MAX_GAP,
        metavar="SECONDS",
        help=f"events of one class this close are merged into one (default: {MAX_GAP:g})",
    )
    running = parser.add_argument_group("running")
    running.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (default: a GPU when there is one, else the CPU), cpu, cuda or cuda:N (an ONNX model: the CPU)",
    )
    running.add_argument(
        "--batch-size", type=_positive(int), default=16, metavar="N", help="windows per forward pass (default: 16)"
    )
    running.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (one shows on a terminal for files that take over a second)",
    )
    parser.set_defaults(handler=tag)


def tag(args: argparse.Namespace) -> None:
    mode = "events" if args.events else "frames" if args.frames else "clips"
    fmt = args.format or DEFAULT_FORMAT[mode]
    outputs.check_format(mode, fmt, args.out, len(args.files))
    tagger = load_tagger(args.model, args.device)
    shown_window, shown_hop = tagger.windows(args.window, args.hop)
    check_windows(shown_window, shown_hop)
    thresholds = None
    if args.decide or args.events:
        thresholds, origin = thresholds_for(tagger, args.thresholds, args.threshold, args.rule)
        print(f"thresholds: {origin}", file=sys.stderr, flush=True)
    elif args.thresholds or args.threshold is not None:
        raise PipelineError("--thresholds/--threshold: used with --decide or --events")
    header = {"model": args.model, "window": shown_window, "hop": shown_hop, "ranked_by": "max"}
    dest = outputs.destination(fmt, args.out, len(args.files))
    if mode == "clips":
        writer = outputs.ClipWriter(fmt, dest, args.top_k, args.timeline, thresholds if args.decide else None, header)
    elif mode == "frames":
        writer = outputs.FrameWriter(fmt, dest, args.out, args.top_k, tagger, header)
    else:
        options = {"min_duration": args.min_duration, "max_gap": args.max_gap}
        writer = outputs.EventWriter(fmt, dest, args.out, tagger, thresholds, options, header)
    errors = []
    with dest.stack if dest is not None else contextlib.nullcontext():
        for path in args.files:
            result = _tag_one(tagger, path, args, writer.begin_file(path), errors)
            if result is not None:
                writer.end_file(result)
        writer.close(errors)
    if errors:
        sys.exit(1)


def _tag_one(tagger, path: str, args: argparse.Namespace, sink, errors: list[dict]):
    """One file's TagResult, or None when it cannot be read: then reported in one line and in `errors`
    (the other files are still tagged)."""
    try:
        return tag_file(
            tagger,
            path,
            window=args.window,
            hop=args.hop,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            frame_sink=sink,
        )
    except (AudioProblem, OSError) as problem:
        detail = problem.detail if isinstance(problem, AudioProblem) else f"{path}: {problem.strerror or problem}"
        detail = " ".join(detail.splitlines())
        errors.append({"file": path, "error": detail})
        print(f"error: {detail}", file=sys.stderr, flush=True)
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="psla", description="Use trained PSLA models. `psla COMMAND --help` documents each command."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_tag(commands)
    add_export(commands)
    try:
        run(lambda args: args.handler(args), parser, argv)
    except BrokenPipeError:  # `psla tag ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()

"""Sharding a split across jobs (DVC matrix stages, a SLURM job array): contiguous blocks, so that
concatenating the shards' outputs in shard order gives exactly the output of one unsharded run.

`data.shards` lists the shard numbers, `[0, 1, 2, 3]` for four jobs per split (a list because DVC's
`matrix` iterates over lists); a stage's `--shard I` takes the count from there, `--shard I/N` states it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.errors import PipelineError

SHARDS_FOLDER = ".shards"


def parse_shard(text: str) -> tuple[int, int | None]:
    """`i/n` with 0 <= i < n, or `i` (the count comes from data.shards)."""
    try:
        parts = [int(part) for part in text.split("/")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"--shard {text}: expected I or I/N, e.g. 0/4")
    index, count = parts[0], (parts[1] if len(parts) == 2 else None)
    if index < 0 or (count is not None and (count < 1 or index >= count)):
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return index, count


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--shard",
        type=parse_shard,
        metavar="I[/N]",
        help="process only shard I of N (0 <= I < N; N defaults to the length of data.shards)",
    )
    mode.add_argument(
        "--merge",
        type=int,
        nargs="?",
        const=0,
        metavar="N",
        help="merge the outputs of N shards (default: the length of data.shards) instead of processing",
    )


def resolve_shard(shard: tuple[int, int | None] | None, shards: list[int]) -> tuple[int, int] | None:
    """`--shard` with its count filled in from data.shards; a shard outside the count is an error."""
    if shard is None:
        return None
    index, count = shard[0], shard[1] or len(shards)
    if index >= count:
        raise PipelineError(f"--shard {index}: data.shards has {count} shard(s), numbered 0..{count - 1}")
    return index, count


def resolve_merge(merge: int | None, shards: list[int]) -> int | None:
    return None if merge is None else (merge or len(shards))


def shard_slice(n: int, shard: tuple[int, int]) -> slice:
    index, count = shard
    return slice(index * n // count, (index + 1) * n // count)


def shard_path(path: str | Path, index: int) -> Path:
    """`manifests/train.csv` -> `manifests/train.shards/0.csv`: a folder per output holds only its
    shards, so a merge stage can depend on that folder whatever the shard count."""
    path = Path(path)
    return path.parent / f"{path.stem}{SHARDS_FOLDER}" / f"{index}{path.suffix}"


def unsharded_stem(path: str | Path) -> str:
    """`manifests/train.shards/0.csv` -> `train`: the name of the output a shard's file belongs to."""
    path = Path(path)
    if path.parent.name.endswith(SHARDS_FOLDER) and path.stem.isdigit():
        return path.parent.name[: -len(SHARDS_FOLDER)]
    return path.stem

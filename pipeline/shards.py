"""Sharding a split across jobs (a SLURM job array): contiguous blocks, so that concatenating
the shards' outputs in shard order gives exactly the output of one unsharded run."""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text}: expected i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return index, count


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--shard", type=parse_shard, metavar="I/N", help="process only shard I of N (0 <= I < N)")
    mode.add_argument("--merge", type=int, metavar="N", help="merge the outputs of N shards instead of processing")


def shard_slice(n: int, shard: tuple[int, int]) -> slice:
    index, count = shard
    return slice(index * n // count, (index + 1) * n // count)


def shard_path(path: str | Path, shard: tuple[int, int]) -> Path:
    """`train.csv` -> `train.shard-0-of-4.csv`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}{path.suffix}")

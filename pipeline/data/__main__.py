"""`python -m pipeline.data [--params FILE] [--set ...]`: fetch what the configured dataset needs now,
ahead of prepare (e.g. on a cluster's login node, which has the network), and count each split."""

from __future__ import annotations

from pipeline.core.cli import params_parser, run
from pipeline.data.listing import Rejected
from pipeline.data.params import load_from_args
from pipeline.data.registry import class_metadata, fetch, list_split


def main(argv: list[str] | None = None) -> None:
    parser = params_parser(
        "Download the configured dataset's metadata (AudioSet: class list, ontology, segment lists; FSD50K: "
        "the release, reassembled) and count the clips of each split, ahead of prepare."
    )

    def body(args):
        params = load_from_args(args)
        for line in fetch(params):
            print(line)
        classes, ontology = class_metadata(params)
        print(f"{params.data.dataset}: {len(classes)} classes, {len(ontology)} ontology entries")
        for split in params.data.splits:
            entries = list_split(params, split, classes).entries
            rejected = sum(isinstance(e, Rejected) for e in entries)
            print(f"{split}: {len(entries) - rejected} clips ({rejected} rows rejected)")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

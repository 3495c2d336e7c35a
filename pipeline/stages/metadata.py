"""Write the dataset's class list and ontology, which every later stage reads.

python -m pipeline.stages.metadata --classes data/classes.csv --ontology data/ontology.json
"""

from pipeline.core.cli import params_parser, run
from pipeline.core.tracking import stage_run
from pipeline.data.classes import write_classes, write_ontology
from pipeline.data.params import load_from_args
from pipeline.data.registry import class_metadata


def main(argv=None):
    parser = params_parser(__doc__.splitlines()[0])
    parser.add_argument("--classes", required=True, help="output class list (index,mid,display_name)")
    parser.add_argument("--ontology", required=True, help="output ontology (AudioSet ontology.json format; [] if none)")

    def body(args):
        params = load_from_args(args)
        classes, ontology = class_metadata(params)
        write_classes(args.classes, classes)
        write_ontology(args.ontology, ontology)
        with stage_run(params, "metadata") as run_:
            run_.log_metrics({"classes": len(classes), "ontology_entries": len(ontology)})
        print(f"{len(classes)} classes -> {args.classes}; {len(ontology)} ontology entries -> {args.ontology}")

    run(body, parser, argv)


if __name__ == "__main__":
    main()

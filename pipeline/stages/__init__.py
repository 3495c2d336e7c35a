"""One thin command-line entry point per DAG stage."""

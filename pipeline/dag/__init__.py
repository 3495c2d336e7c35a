"""Tools over the whole DAG: the stages' code dependencies and the ablation runner."""

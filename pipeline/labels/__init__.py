"""Sampling weights and labels (stages weights, teacher, enhance, relabel): balanced-sampling weights and
label enhancement with the ontology."""

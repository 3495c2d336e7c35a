"""Aggregation and evaluation (stages average, evaluate, score): weight averaging, ensembles, mAP and plots."""

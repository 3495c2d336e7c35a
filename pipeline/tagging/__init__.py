"""Tagging audio with a trained model: the `psla tag` command and the MLflow audio-tagging model."""

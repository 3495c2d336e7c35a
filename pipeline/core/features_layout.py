"""The features file's layout: its HDF5 datasets (one row per clip) and the attribute holding a digest of
its content (MLflow shows it as the file's dataset digest).

A file format that layers above core read, like the predictions file (pipeline.core.predictions): the
features stage writes it (pipeline.features.features), and the MLflow dataset inputs of every stage that
reads it take its digest and clip count from it (pipeline.core.mlflow_inputs)."""

DATASETS = ("fbank", "n_frames", "clip_id", "labels")
CONTENT_DIGEST = "content_digest"  # blake2b of every written clip's id, float16 fbank and labels, in row order

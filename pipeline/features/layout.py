"""The features file's layout: its HDF5 datasets (one row per clip) and the attribute holding a digest of
its content (MLflow shows it as the file's dataset digest)."""

DATASETS = ("fbank", "n_frames", "clip_id", "labels")
CONTENT_DIGEST = "content_digest"  # blake2b of every written clip's id, float16 fbank and labels, in row order

"""The shared core beneath every layer: the params sections and the `Params` type, stage CLI helpers,
atomic I/O, reports, shards, the predictions and features file formats, the metrics and MLflow tracking.
It imports nothing from the layers above it (docs/architecture.md)."""

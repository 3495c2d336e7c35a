"""The shared core beneath every stage: the params schema, stage CLI helpers, atomic I/O, reports,
shards, the predictions file format and MLflow tracking."""

"""Features (stages features, stats and relabel): log-mel filter banks in HDF5 and their statistics."""

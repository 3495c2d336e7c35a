"""Acquiring data (stages metadata and prepare): the dataset plug-ins and their registry, class lists,
audio decoding, downloads and the manifests."""

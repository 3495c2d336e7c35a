"""Acquiring data (stages metadata and prepare): the dataset plug-ins, their params sections and
registry, the full params schema composed from core's sections and theirs (params.py), class lists,
audio decoding, downloads and the manifests."""

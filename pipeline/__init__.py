"""PSLA audio tagging pipeline: library modules; stage CLIs live in pipeline.stages."""

__version__ = "0.1.0"

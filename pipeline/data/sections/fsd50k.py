"""The params section `data.fsd50k` of the FSD50K release (pipeline.data.fsd50k)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool

from pipeline.core import schema
from pipeline.core.schema import AUDIOSET_ONTOLOGY, NonNegative, Positive, Retries

NAME = "fsd50k"
SPLITS = ("train", "val", "eval")


class FSD50KData(schema.Section):
    """The params section data.fsd50k: the official Zenodo release, downloaded or already on disk."""

    source: Literal["download", "local"] = "download"
    release_dir: str | None = None  # archives and/or extracted release; default <data.root>/downloads/fsd50k
    base_url: str = "https://zenodo.org/records/4060432/files"
    record_url: str = "https://zenodo.org/api/records/4060432"  # file sizes and MD5 checksums
    ontology_url: str = AUDIOSET_ONTOLOGY
    verify: StrictBool = True  # check sizes and checksums of downloaded archives against the record
    dev_parts: Annotated[int, Field(ge=0, le=99)] = 5  # FSD50K.dev_audio.z01..z05 + .zip
    eval_parts: Annotated[int, Field(ge=0, le=99)] = 1  # FSD50K.eval_audio.z01 + .zip
    keep_archives: StrictBool = True  # False: delete the parts once reassembled
    timeout_s: Positive = 60.0
    retries: Retries = 3
    backoff_s: NonNegative = 5.0


Section = FSD50KData

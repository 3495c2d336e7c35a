"""The params section `data.folder` of your own labelled audio (pipeline.data.folder)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.core import schema
from pipeline.core.params import DataSettings

NAME = "folder"
SPLITS = None  # any split names


class FolderData(schema.Section):
    """The params section data.folder."""

    csv: str | None = None
    classes: str | None = None
    ontology: str | None = None
    audio_root: str | None = None  # where the CSV's relative audio paths start; default: the CSV's folder
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1  # used only when the CSV has no split column
    eval_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    split_seed: int = 0


Section = FolderData


def check(data: DataSettings, cfg: FolderData) -> None:
    if not (cfg.csv and cfg.classes):
        raise ValueError("data.dataset=folder needs data.folder.csv and data.folder.classes")

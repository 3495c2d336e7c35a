"""The params section `data.demo` of the synthetic demo dataset (pipeline.data.demo)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from pipeline.core import schema
from pipeline.core.schema import PositiveInt, Probability

NAME = "demo"
SPLITS = ("train", "val", "eval")


class DemoData(schema.Section):
    """The params section data.demo: how many clips, how long, how many events and how noisy the labels."""

    seed: int = 0
    n_train: PositiveInt = 600
    n_val: PositiveInt = 100
    n_eval: PositiveInt = 200
    clip_seconds: Annotated[float, Field(ge=0.5, le=60)] = 3.0
    min_events: PositiveInt = 1
    max_events: PositiveInt = 3
    snr_db: tuple[float, float] = (-10.0, 10.0)
    drop_child: Probability = 0.3
    drop_parent: Probability = 0.3

    @model_validator(mode="after")
    def _ranges(self):
        if self.max_events < self.min_events:
            raise ValueError("max_events must be >= min_events")
        if self.snr_db[1] < self.snr_db[0]:
            raise ValueError("snr_db must be [low, high] with low <= high")
        return self


Section = DemoData

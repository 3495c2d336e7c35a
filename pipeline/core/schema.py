"""The building blocks of the params schema, shared by the core sections and the dataset plug-ins'
sections: a strict `Section` base and the bounded number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import PipelineError


class ParamsError(PipelineError):
    """A params file or override that does not fit the schema."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
Retries = Annotated[int, Field(ge=0, le=100)]
SplitName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]

AUDIOSET_ONTOLOGY = "https://raw.githubusercontent.com/audioset/ontology/master/ontology.json"

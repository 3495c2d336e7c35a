"""The whole params schema, composed, and loading it: core's sections (pipeline.core.params) with the data
section built from the dataset plug-ins' params sections (pipeline.data.sections).

`load_params(path, overrides)` = schema defaults <- the YAML file <- `--set section.key=value` overrides,
validated as a whole. Any problem is a one-line `ParamsError` naming the key and the file.

This is the schema's composition root: it imports the plug-ins' params sections and never their code, so
the stages that load params (all of them) do not depend on how a dataset is downloaded or decoded
(pipeline.dag.stage_deps follows the real imports). Every section module imported below is registered,
in order of name; pipeline.data.registry checks that each has its plug-in.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType
from typing import Literal

from pydantic import ValidationError, create_model, model_validator

from pipeline.core import schema
from pipeline.core.params import DataSettings, Params, ParamsError, apply_overrides, format_validation_error, read_yaml
from pipeline.data.sections import audioset, demo, folder, fsd50k  # noqa: F401  (registered below, from globals())

DATASET_SECTIONS: dict[str, ModuleType] = {
    section.NAME: section
    for section in sorted(
        (value for value in dict(globals()).values() if isinstance(value, ModuleType) and hasattr(value, "NAME")),
        key=lambda section: section.NAME,
    )
}


class _Data(DataSettings):
    """The `data` section: the settings every dataset shares, `dataset` (one of the registered plug-ins) and
    one sub-section per plug-in, named after it, holding that plug-in's own params (`Data` adds those)."""

    @property
    def shared(self) -> DataSettings:
        """The settings every dataset shares, as a plug-in receives them (without the plug-ins' sections)."""
        return DataSettings.model_validate({name: getattr(self, name) for name in DataSettings.model_fields})

    @property
    def dataset_section(self) -> schema.Section:
        """The selected dataset's own section, `data.<dataset>`."""
        return getattr(self, self.dataset)

    @property
    def validates_on_eval(self) -> bool:
        """Whether the val split lists the eval clips (AudioSet's official recipe, `audioset.val: eval`), so a
        checkpoint chosen on validation was chosen on eval and its eval score is not clean."""
        check = getattr(DATASET_SECTIONS[self.dataset], "validates_on_eval", None)
        return bool(check and check(self.dataset_section))

    @model_validator(mode="after")
    def _dataset_fits(self):
        section = DATASET_SECTIONS[self.dataset]
        known = section.SPLITS
        if known is not None and not set(self.splits) <= set(known):
            raise ValueError(f"data.dataset={self.dataset} has the splits {', '.join(known)}")
        check = getattr(section, "check", None)
        if check is not None:
            check(self.shared, self.dataset_section)
        return self


Data = create_model(
    "Data",
    __base__=_Data,
    dataset=(Literal[tuple(DATASET_SECTIONS)], "demo"),
    **{name: (section.Section, section.Section()) for name, section in DATASET_SECTIONS.items()},
)


class PipelineParams(Params):
    """`Params` whose data section holds every plug-in's section: the full schema, what `load_params` returns."""

    data: Data = Data()


RENAMED_SECTIONS = {"aggregate": "average"}


def validate(tree: dict, source: str) -> PipelineParams:
    for old, new in RENAMED_SECTIONS.items():
        if old in tree:
            raise ParamsError(
                f"{source}: the params section '{old}' is now '{new}' (rename it; its keys are unchanged)"
            )
    try:
        return PipelineParams.model_validate(tree)
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> PipelineParams:
    return with_overrides(read_yaml(path), overrides, str(path))


def with_overrides(tree: dict, overrides: list[str] | None, origin: str) -> PipelineParams:
    """`tree` (a params file's contents, read from `origin`) under the `--set` overrides, validated."""
    return validate(tree, apply_overrides(tree, overrides, origin))


def load_from_args(args: argparse.Namespace) -> PipelineParams:
    """The params a stage's `--params FILE` and `--set` options name (pipeline.core.cli.params_parser)."""
    return load_params(args.params, args.overrides)

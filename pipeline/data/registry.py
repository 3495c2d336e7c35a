"""The dataset plug-ins, by name: `data.dataset` selects one, whose params section is `data.<name>`.

A dataset is two modules of `pipeline.data`: its params section (pipeline.data.sections.<name>: NAME,
Section, SPLITS, optionally check and validates_on_eval), which the params schema imports, and its plug-in
(a module or package: NAME, class_metadata(data, cfg) and list_split(data, cfg, split, classes), and
optionally fetch(data, cfg) and RESTRICTED_CLASSES_ENHANCE), which only this registry imports. A plug-in
receives the settings every dataset shares (`data`, pipeline.core.params.DataSettings) and its own section
(`cfg`), never the whole params; docs/datasets.md shows one. Adding a dataset is its two modules plus its
name on the import line below and on pipeline/data/params.py's: every plug-in imported here is registered,
in order of name.
"""

from __future__ import annotations

from types import ModuleType

from pipeline.data import audioset, demo, folder, fsd50k  # noqa: F401  (registered below, from globals())
from pipeline.data.params import DATASET_SECTIONS, PipelineParams

DATASETS: dict[str, ModuleType] = {
    plugin.NAME: plugin
    for plugin in sorted(
        (value for value in dict(globals()).values() if isinstance(value, ModuleType) and hasattr(value, "NAME")),
        key=lambda plugin: plugin.NAME,
    )
}

if list(DATASETS) != list(DATASET_SECTIONS):
    raise ImportError(
        f"the dataset plug-ins ({', '.join(DATASETS)}) and the params sections ({', '.join(DATASET_SECTIONS)}) "
        "differ: import each dataset's plug-in here and its section in pipeline/data/params.py"
    )


def selected(params: PipelineParams) -> ModuleType:
    """The plug-in `data.dataset` names. A stage that runs plug-in code reaches it through this module, so
    the plug-ins are among its code dependencies (pipeline.dag.stage_deps)."""
    return DATASETS[params.data.dataset]


def class_metadata(params: PipelineParams) -> tuple:
    """The selected dataset's class list and ontology."""
    return selected(params).class_metadata(params.data.shared, params.data.dataset_section)


def list_split(params: PipelineParams, split: str, classes):
    """The selected dataset's listing of one split (pipeline.data.listing.Listing)."""
    return selected(params).list_split(params.data.shared, params.data.dataset_section, split, classes)


def fetch(params: PipelineParams) -> list[str]:
    """Download what the selected dataset needs ahead of prepare, where it has anything to fetch."""
    plugin = selected(params)
    return plugin.fetch(params.data.shared, params.data.dataset_section) if hasattr(plugin, "fetch") else []

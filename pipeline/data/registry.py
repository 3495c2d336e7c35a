"""The dataset plug-ins, by name: `data.dataset` selects one, and each adds its params section `data.<name>`.

A plug-in is a module (or package) of `pipeline.data` with NAME, Section (its params), SPLITS (or None for
any), class_metadata(params) and list_split(params, split, classes), and optionally check(data),
fetch(params), validates_on_eval(section) and RESTRICTED_CLASSES_ENHANCE; docs/datasets.md shows one.
Adding a dataset is its module plus its name on the import line below: every plug-in imported here is
registered, in order of name.
"""

from __future__ import annotations

from types import ModuleType

from pipeline.data import audioset, demo, folder, fsd50k  # noqa: F401  (registered below, from globals())

DATASETS: dict[str, ModuleType] = {
    plugin.NAME: plugin
    for plugin in sorted(
        (value for value in dict(globals()).values() if isinstance(value, ModuleType) and hasattr(value, "NAME")),
        key=lambda plugin: plugin.NAME,
    )
}


def selected(params) -> ModuleType:
    """The plug-in `data.dataset` names. A stage that runs plug-in code reaches it through this module, so
    the plug-ins are among its code dependencies (pipeline.dag.stage_deps)."""
    return DATASETS[params.data.dataset]


def class_metadata(params) -> tuple:
    """The selected dataset's class list and ontology."""
    return selected(params).class_metadata(params)


def list_split(params, split: str, classes):
    """The selected dataset's listing of one split (pipeline.data.listing.Listing)."""
    return selected(params).list_split(params, split, classes)


def fetch(params) -> list[str]:
    """Download what the selected dataset needs ahead of prepare, where it has anything to fetch."""
    plugin = selected(params)
    return plugin.fetch(params) if hasattr(plugin, "fetch") else []

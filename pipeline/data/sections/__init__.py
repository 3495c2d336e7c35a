"""The dataset plug-ins' params sections, one module per dataset, named after it.

Each module holds what the params schema needs to know about its dataset, and nothing of the plug-in's
code: NAME, `Section` (the params section `data.<NAME>`), SPLITS (or None for any), and optionally
check(data, cfg) and validates_on_eval(cfg). The schema (pipeline/data/params.py) imports these modules
only, so a stage that loads params does not depend on how a dataset is downloaded or decoded.
"""

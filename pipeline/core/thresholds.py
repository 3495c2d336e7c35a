"""Thresholds files: per-class decision thresholds, chosen on the validation split, for the models they were
computed for (the evaluate stage writes `metrics/thresholds.json`; `pipeline/evaluation/thresholds.py` holds
the rules). A class is present when its score is at or above its threshold (`score >= threshold`).

The document (JSON, keys sorted, two-space indent, one trailing newline; every number finite):

    {
      "format": "psla-thresholds/1",
      "split": "val",              # the split the thresholds were chosen on ("eval" when only eval was
                                   # evaluated and val lists the eval clips)
      "val_is_eval": false,        # true when that split lists the eval clips (data.audioset.val: eval):
                                   # thresholds chosen on eval; an eval score at them is not clean
      "rule": "f1",                # the default rule
      "rules": {"f1": "...", ...}, # each rule's one-line description
      "class_ids": ["/m/09x0r", ...],
      "class_names": ["Speech", ...],
      "models": {
        "seed-1/wa": {
          "checkpoints": ["models/wa/seed-1.pt"],       # the files the model is made of, as given
          "checkpoint_sha256": ["3f2a..."],              # each file's SHA-256 (hex), null when it was not there
          "thresholds": {"f1": [0.31, ...], ...},       # per rule, one per class
          "f1": [0.62, ...],                             # val F1 per class at the f1 threshold
          "fallback": [4, 11]                            # classes with no positive or no negative val clip:
        },                                               # their thresholds are the fallback (0.5)
        ...
      }
    }

A model is found by its checkpoint's SHA-256 (`select_thresholds`), so a thresholds file never applies to a
checkpoint it was not computed for, wherever the file was copied. Only single-checkpoint models can be found
that way; an ensemble's entry records its members in order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_write_text

FORMAT = "psla-thresholds/1"
DEFAULT_RULE = "f1"
FALLBACK = 0.5  # the threshold of a class with no positive or no negative clip on the split: nothing to choose on
FIX = "run the evaluate stage (dvc repro evaluate) or pass --thresholds"
NAMES_SHOWN = 6  # the model names an error lists before "and N more"


def _non_finite(value, where: str = "") -> str | None:
    """The key path of the first NaN or infinite number in a JSON-ready value, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(top)"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _non_finite(item, f"{where}[{i}]")
            if found:
                return found
    return None


def thresholds_text(document: dict) -> str:
    """The file's text: sorted keys, so the same document is the same bytes."""
    where = _non_finite(document)
    if where:
        raise PipelineError(f"thresholds document: {where} is not a finite number (NaN or inf cannot be written)")
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_thresholds(path: str | Path, document: dict) -> None:
    """Write a thresholds document atomically (one-line PipelineError for a non-finite value)."""
    try:
        text = thresholds_text(document)
    except PipelineError as err:
        raise PipelineError(f"{path}: {str(err).removeprefix('thresholds document: ')}") from None
    atomic_write_text(path, text)


def read_thresholds(path: str | Path) -> dict:
    """The document of a thresholds file; one-line PipelineError for a missing file, text that is not JSON,
    or another format."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"no thresholds file {path}: {FIX}")
    try:
        document = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not a thresholds file (not UTF-8 text); {FIX}") from None
    except json.JSONDecodeError as err:
        raise PipelineError(
            f"{path}: not a thresholds file (not JSON: {err.msg} at line {err.lineno}); {FIX}"
        ) from None
    tag = document.get("format") if isinstance(document, dict) else None
    if tag != FORMAT:
        found = "no format tag" if tag is None else f"format {tag!r}"
        raise PipelineError(f"{path}: not a thresholds file ({found}, expected {FORMAT!r}); {FIX}")
    return document


def _names(names: Sequence[str]) -> str:
    if not names:
        return "no single-checkpoint model"
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def select_thresholds(
    document: dict, source: str, checkpoint_sha256: str, class_ids: Sequence[str], rule: str = DEFAULT_RULE
) -> np.ndarray:
    """The thresholds (float32, one per class) of the single-checkpoint model whose checkpoint has SHA-256
    `checkpoint_sha256`, by `rule`; `source` names the file in the one-line PipelineError raised for an
    unknown rule, no model of that checkpoint, or class ids that differ from the model's `class_ids`."""
    rules = document.get("rules") or {}
    if rule not in rules:
        raise PipelineError(f"{source}: no thresholds rule '{rule}' (the file has {', '.join(sorted(rules))})")
    models = document.get("models") or {}
    matches = [name for name in sorted(models) if models[name].get("checkpoint_sha256") == [checkpoint_sha256]]
    if not matches:
        singles = [name for name in sorted(models) if len(models[name].get("checkpoint_sha256") or []) == 1]
        raise PipelineError(
            f"{source}: no thresholds for this checkpoint (sha256 {checkpoint_sha256[:12]}); the file has "
            f"thresholds for {_names(singles)}: evaluate this model "
            "(python -m pipeline.stages.evaluate --members CKPT ..., which writes <out-dir>/thresholds.json) "
            "or pass --thresholds"
        )
    name = matches[0]
    have, want = [str(c) for c in document.get("class_ids") or []], [str(c) for c in class_ids]
    if have != want:
        if len(have) != len(want):
            raise PipelineError(
                f"{source}: thresholds for {len(have)} classes, but the model has {len(want)}; "
                "evaluate this model with its own class list"
            )
        first = next(i for i, (a, b) in enumerate(zip(have, want)) if a != b)
        raise PipelineError(
            f"{source}: class ids differ from the model's: class {first + 1} is '{have[first]}' there, "
            f"the model has '{want[first]}'; evaluate this model with its own class list"
        )
    values = models[name].get("thresholds", {}).get(rule)
    if values is None or len(values) != len(want):
        count = "none" if values is None else len(values)
        raise PipelineError(f"{source}: model '{name}' has {count} '{rule}' thresholds for {len(want)} classes; {FIX}")
    return np.asarray(values, dtype=np.float32)

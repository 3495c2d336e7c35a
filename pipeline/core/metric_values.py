"""Metric values that are not finite numbers (a perfect validation set, a class without positives): how
every writer (history, MLflow, JSON, plots, tables) writes them without crashing and with their meaning.
docs/recipe.md, "Metrics", says what each means."""

from __future__ import annotations

import math

import numpy as np

# Why a summary metric of `evaluate` is null, written beside it as `<key>_note`.
NO_POSITIVES = "undefined (no class has a positive clip)"
NO_PAIRS = "undefined (no class has both a positive and a negative clip)"
PERFECT = "inf (mAUC 1: a perfect ranking, so d-prime = sqrt(2) * Phi^-1(1) is infinite)"
INVERTED = "-inf (mAUC 0: a perfectly inverted ranking)"


def is_finite(value) -> bool:
    """A real, finite number (not None, NaN, inf, a string or a bool)."""
    return (
        isinstance(value, int | float | np.floating | np.integer)
        and not isinstance(value, bool)
        and (math.isfinite(value))
    )


def non_finite_note(value) -> str:
    """What a value that is not a finite number stands for, in a word: `inf`, `-inf`, `nan` or `missing`."""
    if value is None:
        return "missing"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"not a number ({value!r})"
    return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf") if math.isinf(number) else str(number)


def value_text(value, spec: str = ".4f", note: str | None = None) -> str:
    """A metric as a text-table cell: formatted when finite; `inf` / `-inf` for an infinity; `n/a` when it
    is missing or NaN, `n/a (<note>)` when a reason is given (e.g. `n/a (no positives)`)."""
    if is_finite(value):
        return format(float(value), spec)
    kind = non_finite_note(value)
    if kind in ("inf", "-inf"):
        return kind
    return f"n/a ({note})" if note else "n/a"


def json_ready(value):
    """`value` with every NaN / infinite float replaced by None, recursively: `json.dumps` would write them
    as bare NaN / Infinity, which is not JSON (DVC and most parsers refuse the file)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    return value


def summary_notes(m_ap: float, m_auc: float) -> dict[str, str]:
    """`{key_note: why}` for each of mAP, mAUC and d-prime that `evaluate` writes as null."""
    notes = {}
    if not is_finite(m_ap):  # None (a JSON null) or NaN
        notes["mAP_note"] = NO_POSITIVES
    if not is_finite(m_auc):
        notes["mAUC_note"] = NO_POSITIVES if not is_finite(m_ap) else NO_PAIRS
        notes["d_prime_note"] = "undefined (mAUC is undefined)"
    elif m_auc >= 1.0:
        notes["d_prime_note"] = PERFECT
    elif m_auc <= 0.0:
        notes["d_prime_note"] = INVERTED
    return notes

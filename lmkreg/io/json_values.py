"""Numbers as lmkreg writes them into its JSON files.

Why a module of its own: the predictors and the cascade write the same confidence numbers into
one document; they must round them the same way, and JSON has no NaN (lmkreg writes with
``allow_nan=False``), so a missing or non-finite value is written as null.
"""
from __future__ import annotations

import math
from typing import Optional

# the confidence numbers of a prediction (mm, shares) are written to 1e-4: far below any signal
JSON_DIGITS = 4


def finite_or_none(value: Optional[float], digits: int = JSON_DIGITS) -> Optional[float]:
    """`value` rounded to `digits` decimals as a Python float, or None when it is None, NaN or infinite."""
    if value is None:
        return None
    v = float(value)
    return round(v, digits) if math.isfinite(v) else None


__all__ = ["JSON_DIGITS", "finite_or_none"]

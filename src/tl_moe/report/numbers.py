"""Numbers as the report's text shows them: an undefined value (None, NaN, ±inf) is never printed as
``nan`` but as ``unavailable (reason)``, and an interval with an undefined bound as ``no interval``.

    format_number(0.1234, ".3f", "no scored expert")          -> '0.123'
    format_number(float("nan"), ".3f", "no scored expert")    -> 'unavailable (no scored expert)'
    format_interval(0.2, 0.1, 0.3, "+.2f", "too few experts") -> '+0.20 [+0.10, +0.30]'
    format_interval(0.2, nan, nan, "+.2f", "too few experts") -> '+0.20 (no interval: too few experts)'
    format_mean_sd(nan, nan, ".3f", "no scored expert")        -> 'unavailable (no scored expert)'
"""

from __future__ import annotations

import math
import numbers as _numbers
from typing import Any

__all__ = ["format_interval", "format_mean_sd", "format_number", "is_defined"]


def is_defined(value: Any) -> bool:
    """Whether ``value`` is a finite real number (numpy and 0-d torch scalars included)."""
    if value is None or isinstance(value, bool):
        return False
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    return isinstance(value, _numbers.Real) and math.isfinite(float(value))


def format_number(value: Any, spec: str, reason: str) -> str:
    """``value`` formatted with ``spec``, or ``unavailable (reason)`` when it is undefined."""
    return format(float(value), spec) if is_defined(value) else f"unavailable ({reason})"


def format_interval(
    estimate: Any, low: Any, high: Any, spec: str, reason: str, interval_reason: str | None = None
) -> str:
    """``estimate [low, high]``; ``estimate (no interval: why)`` when a bound is undefined; ``unavailable
    (reason)`` when the estimate is. ``interval_reason`` says why the interval is missing (default ``reason``)."""
    if not is_defined(estimate):
        return f"unavailable ({reason})"
    shown = format(float(estimate), spec)
    if not (is_defined(low) and is_defined(high)):
        return f"{shown} (no interval: {interval_reason or reason})"
    return f"{shown} [{format(float(low), spec)}, {format(float(high), spec)}]"


def format_mean_sd(mean: Any, sd: Any, spec: str, reason: str) -> str:
    """``mean ± sd``; ``mean`` alone when the spread is undefined (one unit); ``unavailable (reason)``."""
    if not is_defined(mean):
        return f"unavailable ({reason})"
    if not is_defined(sd):
        return f"{format(float(mean), spec)} (no spread: one unit)"
    return f"{format(float(mean), spec)} ± {format(float(sd), spec)}"

"""Conversion of results (numpy / torch scalars and arrays, paths, dataclasses) to strict JSON values."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import date, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(value: Any, *, where: str = "value") -> Any:
    """``value`` as nested dicts, lists, str, int, float, bool and None, ready for strict ``json.dumps``.

    numpy and torch scalars become Python numbers, arrays and tensors become (nested) lists, paths
    and enums become strings, dataclasses become dicts. NaN and infinities, which strict JSON cannot
    hold, become ``None``. Mapping keys must be strings. ``where`` names the value in error messages.

    Raises:
        TypeError: for a value of any other type, or a mapping with a non-string key.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has the key {key!r} of type {type(key).__name__}; only str keys are accepted."
                )
            converted[key] = to_jsonable(item, where=f"{where}[{key!r}]")
        return converted
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(item, where=f"{where}[{i}]") for i, item in enumerate(items)]
    if isinstance(value, (np.generic, np.ndarray)):
        return to_jsonable(value.tolist(), where=where)
    if _is_tensor(value):
        return to_jsonable(value.detach().cpu().tolist(), where=where)
    if isinstance(value, (PurePath, Enum)):
        return str(value.value if isinstance(value, Enum) else value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where=where)
    raise TypeError(
        f"{where} is a {type(value).__name__}, which cannot be written to JSON; accepted: None, bool, str, "
        "int, float, dicts with str keys, lists/tuples/sets, numpy or torch scalars and arrays, paths, "
        "enums, dates and dataclasses."
    )


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, checked without importing torch."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")

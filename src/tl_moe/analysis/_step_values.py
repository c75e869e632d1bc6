"""Probing tables as the few arrays a checkpointed step saves.

A step's value is written to disk element by element where a column holds strings, so a table with a
unit and a concept name per row (one row per unit, concept and k) costs more to save than to compute.
:func:`pack_frame` replaces those columns by integer codes and keeps each one's distinct values once;
:func:`unpack_frame` gives back the very table (same values, dtypes, column order and index).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["PACKED_COLUMNS", "PACKED_STEP_VALUES", "pack_frame", "unpack_frame"]

#: The form of the probing steps' saved values (part of their checkpoint fingerprint): 2, packed tables.
PACKED_STEP_VALUES = 2

#: The string columns of the probing tables that :func:`pack_frame` codes.
PACKED_COLUMNS = ("unit", "concept", "status")


def pack_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[list, str]]]:
    """``frame`` with each of its :data:`PACKED_COLUMNS` as integer codes, and per coded column its
    distinct values (in order of first appearance) and its dtype."""
    packed, values = frame.copy(), {}
    for column in PACKED_COLUMNS:
        if column in frame and frame[column].notna().all():
            codes, uniques = pd.factorize(frame[column])
            packed[column] = codes
            values[column] = (list(uniques), str(frame[column].dtype))
    return packed, values


def unpack_frame(packed: pd.DataFrame, values: dict[str, tuple[list, str]]) -> pd.DataFrame:
    """The table :func:`pack_frame` was given."""
    frame = packed.copy()
    for column, (uniques, dtype) in values.items():
        names = np.array(uniques, dtype=object)[packed[column].to_numpy()]
        frame[column] = pd.Series(names, index=frame.index, dtype=object).astype(dtype)
    return frame

"""The content blocks a report section holds, in the order they were added."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

__all__ = ["Block", "FigureBlock", "MetricsBlock", "SectionContent", "TableBlock", "TextBlock"]


@dataclass(frozen=True)
class TextBlock:
    """Text in the report's Markdown subset (see :mod:`tl_moe.report.markup`)."""

    text: str


@dataclass(frozen=True)
class FigureBlock:
    """A saved PNG: ``src`` is its path relative to ``index.html``."""

    name: str
    caption: str
    src: str


@dataclass(frozen=True)
class TableBlock:
    """A table shown by its first rows (``head``); the full table lives in the ``csv`` and ``parquet`` files.

    ``csv`` and ``parquet`` are paths relative to ``index.html``; ``n_rows`` counts the full table's rows.
    """

    name: str
    caption: str
    head: pd.DataFrame
    n_rows: int
    csv: str
    parquet: str
    show_index: bool


@dataclass(frozen=True)
class MetricsBlock:
    """Summary numbers shown as a key/value table (values already converted to JSON values)."""

    metrics: dict[str, Any]


Block = TextBlock | FigureBlock | TableBlock | MetricsBlock


class SectionContent(Protocol):
    """What the page renderer reads of a section (a :class:`~tl_moe.report.report.Section`)."""

    title: str
    key: str
    intro: str
    blocks: Sequence[Block]

"""The content blocks a report section holds, in the order they were added."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from tl_moe.report.dashboard import DashboardBlock

__all__ = [
    "Block",
    "DashboardBlock",
    "FigureBlock",
    "MetricsBlock",
    "SectionContent",
    "TableBlock",
    "TextBlock",
]


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
    """A table shown in full (``head``), or, when longer than the page may show, by its ``summary``.

    ``csv`` and ``parquet`` (paths relative to ``index.html``) hold the full table; ``n_rows`` counts
    its rows. ``summary``: ``(title, small table)`` parts (:func:`tl_moe.report.summary.summarize`)
    shown instead of the rows, or None when ``head`` is the whole table.
    """

    name: str
    caption: str
    head: pd.DataFrame
    n_rows: int
    csv: str
    parquet: str
    show_index: bool
    summary: tuple[tuple[str, pd.DataFrame], ...] | None = None


@dataclass(frozen=True)
class MetricsBlock:
    """Summary numbers shown as a key/value table (values already converted to JSON values)."""

    metrics: dict[str, Any]


Block = TextBlock | FigureBlock | TableBlock | MetricsBlock | DashboardBlock


class SectionContent(Protocol):
    """What the page renderer reads of a section (a :class:`~tl_moe.report.report.Section`)."""

    title: str
    key: str
    intro: str
    blocks: Sequence[Block]

"""The report of a ``tl-moe analyze`` run: sections of text, figures, tables and metrics in one directory.

Usage::

    report = Report("tl-moe analysis of toy/moe-16x2", "out/")
    section = report.add_section("k-sparse probing", key="probing", intro="What the probes found.")
    section.add_figure(line_plot(frame, "k", "f1", "model", "F1 by k", "k", "F1", logx=True), "probing_f1")
    section.add_table(frame, "probing_scores", "F1 per concept, layer and expert.")
    section.add_metrics({"mean_f1_k1": 0.93})
    report.add_metadata({"settings": {...}, "versions": package_versions()})
    report.write()  # index.html + results.json; call again after adding more sections

Figures and tables are written to disk as soon as they are added (figures are then closed, and only
a table's first rows stay in memory); :meth:`Report.write` (re)writes the page and ``results.json``.
See ``docs/REPORT.md`` for the directory layout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from tl_moe.report.blocks import Block, FigureBlock, MetricsBlock, TableBlock, TextBlock
from tl_moe.report.dashboard import MAX_INLINE_CARDS, DashboardBlock, ExpertCard, layer_page_path
from tl_moe.report.files import (
    check_name,
    column_label,
    has_default_index,
    save_figure,
    save_table,
    write_text,
)
from tl_moe.report.html import render_layer_page, render_page
from tl_moe.report.jsonable import to_jsonable
from tl_moe.report.summary import TableSummary, summarize

__all__ = ["Report", "Section"]

FIGURES_DIR = "figures"
TABLES_DIR = "tables"
INDEX_FILE = "index.html"
RESULTS_FILE = "results.json"


class Section:
    """One titled part of a :class:`Report`; made by :meth:`Report.add_section`, filled in the order of calls.

    Attributes:
        title: heading shown in the page and the table of contents.
        key: identifier of the section in ``results.json`` and in the page's anchors.
        intro: Markdown-subset text shown under the heading.
        blocks: the content added so far, in order.
        metrics: every metric added so far (later values of a key replace earlier ones), as JSON values.
        records: extra ``results.json`` entries of the section (:meth:`add_record`).
    """

    def __init__(self, report: Report, title: str, key: str, intro: str) -> None:
        self._report = report
        self.title = title
        self.key = key
        self.intro = intro
        self.blocks: list[Block] = []
        self.metrics: dict[str, Any] = {}
        self.records: dict[str, Any] = {}

    def add_text(self, text: str) -> None:
        """Add a paragraph block: plain text or the Markdown subset (paragraphs, `code`, **bold**, bullets)."""
        _check_text(text, "text")
        self.blocks.append(TextBlock(text))

    def add_figure(self, fig: Figure, name: str, caption: str = "") -> Path:
        """Save ``fig`` as ``figures/<name>.png`` (150 dpi), close it, and show it here; returns the PNG path.

        ``name`` must be unique among the report's figures (letters, digits, ``_ - .``).
        """
        if not isinstance(fig, Figure):
            raise TypeError(f"add_figure expects a matplotlib.figure.Figure, got {type(fig).__name__}.")
        _check_text(caption, "caption")
        src = f"{FIGURES_DIR}/{self._report._check_new_name(name, FigureBlock)}.png"
        path = self._report.out_dir / src
        save_figure(fig, path)
        self.blocks.append(FigureBlock(name=name, caption=caption, src=src))
        return path

    def add_table(
        self,
        frame: pd.DataFrame,
        name: str,
        caption: str = "",
        max_rows: int = 30,
        summary: TableSummary | None = None,
    ) -> Path:
        """Show ``frame`` here; save all of it as ``tables/<name>.csv`` / ``.parquet``, linked from the page.

        A table of at most ``max_rows`` rows is shown in full. A longer one is summarized instead
        (:func:`~tl_moe.report.summary.summarize`): rows per status, the score's quantiles per group
        and its top rows as ``summary`` says (default: every numeric column's quantiles and the
        first ``max_rows`` rows). The index is shown and saved unless it is the default ``0..n-1``
        range. ``name`` must be unique among the report's tables. Returns the CSV path.
        """
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"add_table expects a pandas.DataFrame, got {type(frame).__name__}.")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int (rows shown in the page), got {max_rows!r}.")
        labels = [column_label(label) for label in frame.columns]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(
                f"Table {name!r} has duplicate column labels {duplicates}; column labels must be unique."
            )
        _check_text(caption, "caption")
        if summary is not None:
            if not isinstance(summary, TableSummary):
                raise TypeError(f"summary must be a TableSummary, got {type(summary).__name__}.")
            summary.check(frame, name)
        parts = None
        if len(frame) > max_rows:
            parts = tuple(summarize(frame, summary or TableSummary(top=None), max_rows))
        stem = f"{TABLES_DIR}/{self._report._check_new_name(name, TableBlock)}"
        csv, parquet = f"{stem}.csv", f"{stem}.parquet"
        save_table(frame, self._report.out_dir / csv, self._report.out_dir / parquet)
        self.blocks.append(
            TableBlock(
                name=name,
                caption=caption,
                head=frame.head(max_rows).copy(),
                n_rows=len(frame),
                csv=csv,
                parquet=parquet,
                show_index=not has_default_index(frame),
                summary=parts,
            )
        )
        return self._report.out_dir / csv

    def add_dashboard(
        self, cards: Sequence[ExpertCard], name: str, caption: str = "", max_inline: int = MAX_INLINE_CARDS
    ) -> None:
        """Show an expert dashboard here: a sortable index of the experts and one card per expert
        (:class:`~tl_moe.report.dashboard.ExpertCard`); with more than ``max_inline`` cards, the cards
        go to one page per layer (``experts/<name>-layer-N.html``), linked from the index."""
        cards = tuple(cards)
        if not all(isinstance(card, ExpertCard) for card in cards):
            raise TypeError("add_dashboard expects ExpertCard objects.")
        _check_text(caption, "caption")
        self._report._check_new_name(name, DashboardBlock)
        self.blocks.append(DashboardBlock(name, caption, cards, max_inline=max_inline))

    def add_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Show ``metrics`` as a key/value table here and record them in ``results.json`` under this section's key.

        Values may be numbers, strings, booleans, None, numpy/torch scalars or arrays, or nested dicts
        of these; NaN and infinities are recorded as ``null``.
        """
        if not isinstance(metrics, Mapping):
            raise TypeError(f"add_metrics expects a dict of name -> value, got {type(metrics).__name__}.")
        converted = to_jsonable(dict(metrics), where=f"metrics of section {self.key!r}")
        self.metrics.update(converted)
        self.blocks.append(MetricsBlock(converted))

    def add_record(self, key: str, value: Any) -> None:
        """Record ``value`` (JSON-able: e.g. a list of dicts) in ``results.json`` as this section's ``key``.

        Not shown on the page (show it with :meth:`add_table`); for data users script against.
        """
        if key in ("title", "metrics", "figures", "tables"):
            raise ValueError(f"{key!r} is a reserved entry of a section in results.json.")
        self.records[key] = to_jsonable(value, where=f"record {key!r} of section {self.key!r}")

    def results(self) -> dict[str, Any]:
        """This section's entry in ``results.json``: title, metrics, and the files of its figures and tables."""
        return {
            **self.records,
            "title": self.title,
            "metrics": dict(self.metrics),
            "figures": {b.name: b.src for b in self.blocks if isinstance(b, FigureBlock)},
            "tables": {
                b.name: {
                    "csv": b.csv,
                    "parquet": b.parquet,
                    "n_rows": b.n_rows,
                    "summarized": b.summary is not None,
                    "columns": [column_label(c) for c in b.head.columns],
                }
                for b in self.blocks
                if isinstance(b, TableBlock)
            },
            **(
                {
                    "dashboards": {
                        b.name: _dashboard_files(b) for b in self.blocks if isinstance(b, DashboardBlock)
                    }
                }
                if any(isinstance(b, DashboardBlock) for b in self.blocks)
                else {}
            ),
        }

    def __repr__(self) -> str:
        return f"Section(key={self.key!r}, title={self.title!r}, blocks={len(self.blocks)})"


class Report:
    """An HTML report with figures, tables and a machine-readable ``results.json``, written to ``out_dir``.

    Args:
        title: the page title.
        out_dir: directory that receives ``index.html``, ``results.json``, ``figures/`` and ``tables/``;
            created when the first file is written.
    """

    def __init__(self, title: str, out_dir: str | Path) -> None:
        _check_text(title, "title")
        self.title = title
        self.out_dir = Path(out_dir)
        self.metadata: dict[str, Any] = {}
        self.findings: list[str] = []
        self._sections: dict[str, Section] = {}

    @property
    def sections(self) -> tuple[Section, ...]:
        """The sections in page order."""
        return tuple(self._sections.values())

    def section(self, key: str) -> Section:
        """The section with ``key``."""
        if key not in self._sections:
            raise KeyError(f"No section with key {key!r}; sections: {list(self._sections)}.")
        return self._sections[key]

    def add_section(self, title: str, *, intro: str = "", key: str | None = None) -> Section:
        """Append a section and return it.

        ``key`` names the section in ``results.json`` and must be unique (letters, digits, ``_ - .``);
        by default it is made from the title (``"Domain experts"`` -> ``"domain-experts"``, with a
        numeric suffix if that key is taken).
        """
        _check_text(title, "section title")
        _check_text(intro, "intro")
        if key is None:
            key = self._free_key(_slug(title))
        else:
            check_name(key, "Section key")
            if key in self._sections:
                raise ValueError(f"A section with key {key!r} already exists; keys must be unique.")
        section = Section(self, title, key, intro)
        self._sections[key] = section
        return section

    def add_findings(self, findings: list[str]) -> None:
        """Headline sentences (Markdown subset) shown in a box at the top of the page and saved under
        ``"findings"`` in ``results.json``."""
        for finding in findings:
            _check_text(finding, "finding")
        self.findings.extend(findings)

    def add_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Record run settings, model configs, versions, timings...: shown at the end of the page and
        saved under ``"metadata"`` in ``results.json``. Top-level keys added again replace earlier values."""
        if not isinstance(metadata, Mapping):
            raise TypeError(f"add_metadata expects a dict, got {type(metadata).__name__}.")
        self.metadata.update(to_jsonable(dict(metadata), where="metadata"))

    def results(self) -> dict[str, Any]:
        """The content of ``results.json``: title, per-section metrics and files, and the metadata."""
        return {
            "title": self.title,
            "findings": list(self.findings),
            "sections": {key: section.results() for key, section in self._sections.items()},
            "metadata": dict(self.metadata),
        }

    def write(self) -> Path:
        """Write (or rewrite) ``index.html`` and ``results.json``; returns the path of ``index.html``.

        Writing again without changes produces identical files.
        """
        results = json.dumps(self.results(), indent=2, ensure_ascii=False, allow_nan=False)
        write_text(self.out_dir / RESULTS_FILE, results + "\n")
        index = self.out_dir / INDEX_FILE
        for section in self.sections:
            for block in section.blocks:
                if isinstance(block, DashboardBlock) and block.paged:
                    for layer in block.layers():
                        page = render_layer_page(self.title, block, layer)
                        write_text(self.out_dir / layer_page_path(block.name, layer), page)
        write_text(index, render_page(self.title, self.sections, self.metadata, self.findings))
        return index

    def _check_new_name(
        self, name: str, kind: type[FigureBlock] | type[TableBlock] | type[DashboardBlock]
    ) -> str:
        """``name`` if it is a safe file name not yet used by a block of type ``kind``; else a ValueError."""
        what = {FigureBlock: "figure", TableBlock: "table", DashboardBlock: "dashboard"}[kind]
        check_name(name, f"The {what} name")
        taken = {b.name for s in self._sections.values() for b in s.blocks if isinstance(b, kind)}
        if name in taken:
            raise ValueError(
                f"A {what} named {name!r} was already added to this report; {what} names must be unique."
            )
        return name

    def _free_key(self, base: str) -> str:
        key, n = base, 1
        while key in self._sections:
            n += 1
            key = f"{base}-{n}"
        return key

    def __repr__(self) -> str:
        return f"Report(title={self.title!r}, out_dir={str(self.out_dir)!r}, sections={list(self._sections)})"


def _dashboard_files(block: DashboardBlock) -> dict[str, Any]:
    """A dashboard's entry in ``results.json``: its experts and its per-layer pages (if paged)."""
    pages = [layer_page_path(block.name, layer) for layer in block.layers()] if block.paged else []
    return {"experts": len(block.cards), "pages": pages}


def _slug(title: str) -> str:
    """A section key made from a title: lowercase ASCII letters and digits joined by '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:64].strip("-")
    return slug or "section"


def _check_text(text: Any, what: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"The {what} must be a str, got {type(text).__name__}.")

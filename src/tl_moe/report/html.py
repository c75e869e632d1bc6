"""Rendering of a report to self-contained HTML pages (inline CSS, no external URL).

Every piece of text that reaches the page goes through :func:`~tl_moe.report.markup.escape` or the
Markdown-subset renderer, which escapes too. Figures are referenced by relative paths to PNG files.
A page holds no JavaScript, except a page with an expert dashboard: its one fixed inline script
(:data:`~tl_moe.report.dashboard.SORT_SCRIPT`) sorts the experts' index.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import pandas as pd

from tl_moe.report.blocks import Block, FigureBlock, MetricsBlock, SectionContent, TableBlock, TextBlock
from tl_moe.report.dashboard import (
    DASHBOARD_CSS,
    SORT_SCRIPT,
    DashboardBlock,
    cards_html,
    index_html,
    layer_page_path,
)
from tl_moe.report.files import column_label
from tl_moe.report.markup import (
    CELL_MARKS,
    SPACE_MARK,
    char_code,
    escape,
    escape_controls,
    inline_to_html,
    markdown_to_html,
)

__all__ = ["CSS", "format_value", "render_layer_page", "render_page"]

# Longest cell text shown in an HTML table; the CSV and parquet files keep the full value.
MAX_CELL_CHARS = 300
SETTINGS_ANCHOR = "settings"
SETTINGS_TITLE = "Settings and metadata"

CSS = """
body { margin: 0; color: #1f2328; background: #fff; line-height: 1.55;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 2rem 1.25rem 4rem; }
h1 { font-size: 1.9rem; margin: 0 0 1rem; }
h2 { font-size: 1.4rem; margin-top: 2.5rem; padding-bottom: .3rem; border-bottom: 1px solid #d8dee4; }
h3 { font-size: 1.1rem; margin-top: 1.5rem; }
a { color: #0969da; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em;
  background: #eff1f3; padding: .1em .3em; border-radius: 4px; }
nav.toc { background: #f6f8fa; border: 1px solid #d8dee4; border-radius: 6px; padding: .6rem 1.25rem; }
nav.toc h2 { border: 0; margin: 0 0 .2rem; padding: 0; font-size: 1.05rem; }
figure { margin: 1.5rem 0; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption, caption { color: #57606a; font-size: .92rem; text-align: left; margin: .4rem 0; }
caption { caption-side: top; }
.scroll { overflow-x: auto; margin: 1.5rem 0; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { padding: .3rem .65rem; border-bottom: 1px solid #e5e7eb; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #d0d7de; }
tbody tr:nth-child(even) { background: #f6f8fa; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #57606a; font-size: .85rem; }
div.summary { border-left: 3px solid #d0d7de; padding-left: .75rem; margin: 1.5rem 0; }
div.summary .scroll { margin: .6rem 0; }
p.table-title { color: #57606a; font-size: .92rem; margin: .4rem 0; }
aside.findings { background: #fff8e6; border: 1px solid #e3c16f; border-radius: 6px; padding: .5rem 1.25rem;
  margin: 1rem 0 1.5rem; }
aside.findings h2 { border: 0; margin: .2rem 0; padding: 0; font-size: 1.1rem; }
aside.findings li { margin: .25rem 0; }
""".strip()

EMPTY_CELL = "∅"
"""How a table cell shows empty text."""

MISSING_CELL = "–"
"""How a table cell shows a missing value."""


def visible_whitespace(text: str) -> str:
    r"""``text`` as a table cell shows it, every distinct text distinctly: a backslash as ``\\``, newlines,
    tabs and carriage returns drawn (``⏎ ⇥ ␍``), leading and trailing spaces as ``·``, every other
    unprintable character as its code (:func:`~tl_moe.report.markup.escape_controls`, e.g. a NUL as the
    four characters backslash, x, 0, 0); a literal mark where it could be read as one drawn (``⏎ ⇥ ␍``
    anywhere, ``·`` among the leading or trailing spaces, a whole cell of ``∅`` or ``–``) as its code;
    :data:`EMPTY_CELL` if empty."""
    if text == "":
        return EMPTY_CELL
    if text in (EMPTY_CELL, MISSING_CELL):
        return char_code(text)
    edge = " " + SPACE_MARK
    lead = len(text) - len(text.lstrip(edge))
    trail = len(text) - len(text.rstrip(edge)) if lead < len(text) else 0
    middle = escape_controls(text[lead : len(text) - trail])
    for raw, shown in CELL_MARKS.items():
        middle = middle.replace(raw, shown)
    return _edge(text[:lead]) + middle + _edge(text[len(text) - trail :])


def _edge(spaces: str) -> str:
    """A run of leading or trailing spaces and literal ``·`` drawn: each space as ``·``, each ``·`` as its code."""
    return "".join(SPACE_MARK if char == " " else char_code(char) for char in spaces)


def format_value(value: Any) -> str:
    """``value`` as short display text (not yet escaped): 4 significant digits for floats, '–' for missing."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return visible_whitespace(value)
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return MISSING_CELL
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        magnitude = abs(number)
        if not math.isfinite(number):
            return str(number)
        if magnitude == 0:
            return "0"
        if number.is_integer() and magnitude < 1e15:
            return str(int(number))  # counts stored as floats read as counts
        if magnitude >= 1e6 or magnitude < 1e-3:
            return f"{number:.3e}"
        if magnitude >= 1e3:
            return f"{number:.1f}"
        return f"{number:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _cell(value: Any, tag: str = "td", numeric: bool = False) -> str:
    """One escaped table cell; long text is cut to :data:`MAX_CELL_CHARS` characters."""
    text = format_value(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    css = ' class="num"' if numeric else ""
    return f"<{tag}{css}>{escape(text)}</{tag}>"


def _data_table(frame: pd.DataFrame, show_index: bool, caption_html: str) -> str:
    """An HTML table of all rows of ``frame``; numeric columns right-aligned."""
    dtypes = frame.dtypes.tolist()
    numeric = [pd.api.types.is_numeric_dtype(d) and not pd.api.types.is_bool_dtype(d) for d in dtypes]
    index_header = [_cell(column_label(frame.index.name or ""), "th")] if show_index else []
    header = index_header + [
        _cell(column_label(c), "th", num) for c, num in zip(frame.columns, numeric, strict=True)
    ]
    rows = []
    for label, values in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        index_cell = [_cell(column_label(label), "th")] if show_index else []
        cells = [_cell(v, numeric=num) for v, num in zip(values, numeric, strict=True)]
        rows.append(f"<tr>{''.join(index_cell + cells)}</tr>")
    return (
        f'<div class="scroll"><table><caption>{caption_html}</caption>'
        f"<thead><tr>{''.join(header)}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of nested dicts; lists of dicts are flattened with ``[i]`` keys."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
        for i, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{i}]")
    else:
        yield prefix, value


def key_value_table(mapping: Mapping[str, Any]) -> str:
    """A two-column table of ``mapping`` with nested dicts flattened to dotted keys."""
    rows = [
        f"<tr>{_cell(key, 'th')}{_cell(value, numeric=isinstance(value, Real) and not isinstance(value, bool))}</tr>"
        for key, value in _flatten(mapping, "")
    ]
    return '<div class="scroll"><table class="kv"><tbody>\n' + "\n".join(rows) + "\n</tbody></table></div>"


class _Numbering:
    """Running numbers of figures and tables across the page."""

    def __init__(self) -> None:
        self.figures = 0
        self.tables = 0


def _block_html(block: Block, numbering: _Numbering) -> str:
    if isinstance(block, TextBlock):
        return markdown_to_html(block.text)
    if isinstance(block, MetricsBlock):
        return key_value_table(block.metrics)
    if isinstance(block, FigureBlock):
        numbering.figures += 1
        caption = f"<strong>Figure {numbering.figures}.</strong> {inline_to_html(block.caption)}"
        alt = escape(block.caption or block.name)
        return (
            f'<figure id="figure-{escape(block.name)}"><img src="{escape(block.src)}" alt="{alt}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    if isinstance(block, TableBlock):
        numbering.tables += 1
        files = f'<a href="{escape(block.csv)}">CSV</a>, <a href="{escape(block.parquet)}">parquet</a>'
        title = f"<strong>Table {numbering.tables}.</strong> {inline_to_html(block.caption)}"
        if block.summary is None:
            caption = f'{title} <span class="note">(all {block.n_rows} rows; full table: {files})</span>'
            return (
                f'<div id="table-{escape(block.name)}">'
                f"{_data_table(block.head, block.show_index, caption)}</div>"
            )
        return _summary_html(block, title, files)
    if isinstance(block, DashboardBlock):
        return _dashboard_html(block)
    raise TypeError(f"Unknown report block {type(block).__name__}.")


def _summary_html(block: TableBlock, title: str, files: str) -> str:
    """A long table as its summary parts, each a small table, under one numbered caption."""
    note = f"{block.n_rows} rows, summarized below; full table: {files}"
    parts = [
        _data_table(part.reset_index(drop=True), False, f"{escape(part_title)} ({len(part)} rows)")
        for part_title, part in block.summary or ()
    ]
    return (
        f'<div id="table-{escape(block.name)}" class="summary"><p class="table-title">{title} '
        f'<span class="note">({note})</span></p>\n' + "\n".join(parts) + "</div>"
    )


def _dashboard_html(block: DashboardBlock) -> str:
    """The index of the dashboard's experts, then their cards (or links to one page per layer)."""
    caption = f'<p class="table-title">{inline_to_html(block.caption)}</p>' if block.caption else ""
    if not block.paged:
        body = index_html(block) + cards_html(block.cards)
    else:
        links = ", ".join(
            f'<a href="{escape(layer_page_path(block.name, layer))}">layer {layer}</a>'
            for layer in block.layers()
        )
        body = f'<p class="note">{len(block.cards)} experts: cards on one page per layer ({links}).</p>'
        body += index_html(block)
    return f'<div id="dashboard-{escape(block.name)}" class="dashboard">{caption}{body}</div>'


def _page(title: str, body: str, scripted: bool) -> str:
    css = CSS + ("\n" + DASHBOARD_CSS if scripted else "")
    script = f"\n<script>{SORT_SCRIPT}</script>" if scripted else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>\n{css}\n</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n</main>{script}\n</body>\n</html>\n"
    )


def render_layer_page(title: str, block: DashboardBlock, layer: int) -> str:
    """The page of one layer's cards of a paged dashboard (it lies in a folder below ``index.html``)."""
    cards = tuple(card for card in block.cards if card.layer == layer)
    layer_block = DashboardBlock(block.name, block.caption, cards, max_inline=len(cards))
    body = (
        f'<h1>{escape(title)}</h1>\n<p><a href="../index.html#dashboard-{escape(block.name)}">Back to the '
        f"report</a></p>\n<h2>Layer {layer}: {len(cards)} experts</h2>\n"
        + index_html(layer_block)
        + cards_html(cards)
    )
    return _page(f"{title} · layer {layer}", body, scripted=True)


def _settings_html(metadata: Mapping[str, Any]) -> str:
    """The closing section: scalar metadata in one table, then one titled table per nested entry."""
    scalars = {key: value for key, value in metadata.items() if not isinstance(value, Mapping)}
    parts = [key_value_table(scalars)] if scalars else []
    for key, value in metadata.items():
        if isinstance(value, Mapping):
            parts.append(f"<h3>{escape(key)}</h3>")
            parts.append(key_value_table(value) if value else '<p class="note">(empty)</p>')
    if not parts:
        parts.append('<p class="note">No settings were recorded.</p>')
    return "\n".join(parts)


def _findings_html(findings: Sequence[str]) -> str:
    items = "".join(f"<li>{inline_to_html(finding)}</li>" for finding in findings)
    return f'<aside class="findings" aria-label="Findings"><h2>What this run found</h2><ul>{items}</ul></aside>\n'


def render_page(
    title: str,
    sections: Sequence[SectionContent],
    metadata: Mapping[str, Any],
    findings: Sequence[str] = (),
) -> str:
    """The full HTML page: title, findings box, table of contents, the sections, the settings/metadata."""
    numbering = _Numbering()
    toc = "".join(f'<li><a href="#section-{escape(s.key)}">{escape(s.title)}</a></li>' for s in sections)
    toc += f'<li><a href="#{SETTINGS_ANCHOR}">{SETTINGS_TITLE}</a></li>'
    body = []
    for section in sections:
        blocks = [markdown_to_html(section.intro)] if section.intro else []
        blocks += [_block_html(block, numbering) for block in section.blocks]
        body.append(
            f'<section id="section-{escape(section.key)}">\n<h2>{escape(section.title)}</h2>\n'
            + "\n".join(blocks)
            + "\n</section>"
        )
    body.append(
        f'<section id="{SETTINGS_ANCHOR}">\n<h2>{SETTINGS_TITLE}</h2>\n{_settings_html(metadata)}\n</section>'
    )
    scripted = any(isinstance(b, DashboardBlock) for s in sections for b in s.blocks)
    return _page(
        title,
        f"<h1>{escape(title)}</h1>\n"
        + (_findings_html(findings) if findings else "")
        + f'<nav class="toc" aria-label="Contents"><h2>Contents</h2><ol>{toc}</ol></nav>\n'
        + "\n".join(body),
        scripted,
    )

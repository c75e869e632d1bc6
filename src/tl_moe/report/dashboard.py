"""Expert dashboard: one card per expert, in the manner of SAE dashboards, rendered to escaped HTML.

A card shows an expert's top contexts (each token's routing weight as its background colour, the
tokens routed to the expert underlined, the context's target outlined), its logit-lens tokens, an
inline-SVG histogram of its saliency, its routing share per domain beside the corpus's share, its
label with the label's scores, and its causal effects where they were measured. An index table above
the cards sorts by any numeric column (a few lines of inline JavaScript; the page works without it).
With more cards than :data:`MAX_INLINE_CARDS` the cards go to one page per layer, linked from the index.

Everything here is offline: no library, no external URL; every text goes through :func:`escape`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tl_moe.report.markup import escape

__all__ = [
    "DASHBOARD_CSS",
    "MAX_INLINE_CARDS",
    "SORT_SCRIPT",
    "CardContext",
    "DashboardBlock",
    "ExpertCard",
    "card_html",
    "index_html",
    "layer_page_path",
]

MAX_INLINE_CARDS = 64
"""More cards than this: one page per layer (``experts/layer-N.html``) instead of cards inline."""
PAGES_DIR = "experts"

DASHBOARD_CSS = """
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1rem; margin: 1rem 0; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: .6rem .85rem; background: #fff; }
.card h3 { margin: 0 0 .3rem; font-size: 1.02rem; }
.card h4 { margin: .6rem 0 .2rem; font-size: .82rem; color: #57606a; text-transform: uppercase;
  letter-spacing: .03em; }
.card .label { font-weight: 600; }
.card .scores { font-size: .85rem; color: #1f2328; margin: .2rem 0; }
.card .status { color: #9a6700; font-size: .85rem; }
.ctx { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .8rem;
  white-space: pre-wrap; word-break: break-all; background: #f6f8fa; border-radius: 4px;
  padding: .25rem .4rem; margin: .2rem 0; line-height: 1.7; }
.tok { border-radius: 2px; }
.tok.routed { border-bottom: 2px solid #0550ae; }
.tok.target { outline: 1.5px solid #cf222e; }
.ctx .src { color: #57606a; font-family: system-ui, sans-serif; font-size: .72rem; margin-left: .4rem; }
.lens code { margin-right: .25rem; }
svg.hist rect { fill: #218bff; }
svg.hist line { stroke: #57606a; stroke-width: 1; }
.hist-axis { font-size: .72rem; color: #57606a; display: flex; justify-content: space-between; width: 220px; }
table.domains { font-size: .8rem; }
table.domains td { padding: .05rem .4rem; border: 0; }
.bar { position: relative; display: inline-block; vertical-align: middle; width: 160px; height: .7rem; background: #eaeef2; border-radius: 2px; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; background: #8250df; border-radius: 2px; }
.bar .base { position: absolute; top: -2px; bottom: -2px; width: 2px; background: #1f2328; }
table.sortable th[data-sort] { cursor: pointer; }
table.sortable th[data-sort]::after { content: " \\2195"; color: #8c959f; }
""".strip()

SORT_SCRIPT = (
    "document.querySelectorAll('table.sortable th[data-sort]').forEach(function(th){"
    "th.addEventListener('click',function(){var body=th.closest('table').tBodies[0],i=th.cellIndex,"
    "down=th.getAttribute('data-dir')!=='desc';th.setAttribute('data-dir',down?'desc':'asc');"
    "Array.from(body.rows).sort(function(a,b){var x=parseFloat(a.cells[i].getAttribute('data-v')),"
    "y=parseFloat(b.cells[i].getAttribute('data-v'));if(isNaN(x))return isNaN(y)?0:1;if(isNaN(y))return -1;"
    "return down?y-x:x-y;}).forEach(function(r){body.appendChild(r);});});});"
)
"""The only script of a page: click a numeric header of a ``table.sortable`` to sort its rows."""


@dataclass(frozen=True)
class CardContext:
    """One context shown on a card.

    Attributes:
        tokens: the window's token texts.
        strengths: the expert's routing weight at each token (0 where not routed to it; NaN unknown).
        marks: whether each token was routed to the expert.
        target: index of the token the context was kept for.
        saliency: the target's routing weight × ‖expert output‖.
        domain: the document's domain.
    """

    tokens: tuple[str, ...]
    strengths: tuple[float, ...]
    marks: tuple[bool, ...]
    target: int
    saliency: float
    domain: str


@dataclass(frozen=True)
class ExpertCard:
    """Everything one expert's card shows (texts are plain; the renderer escapes them).

    Attributes:
        layer, expert: the expert.
        label: its label ("" when none), with ``kind`` (concept, token set, ...).
        status: ``ok`` or why the expert was not labeled/scored.
        scores: ``(name, shown value)`` lines of the label's scores (e.g. balanced accuracy with its
            control and interval).
        sort_values: numeric columns of the index (name -> value; NaN when undefined; an int for a
            count, shown as an integer).
        contexts: top contexts.
        lens_tokens: top logit-lens tokens.
        histogram: counts per bin of the saliency sample, and the bins' ``(low, high)`` range.
        histogram_caption: what the histogram counts.
        domains: ``(domain, share of the expert's routed tokens, share of all tokens)`` rows.
        effects: ``(name, shown value)`` lines of causal effects (empty when none was measured).
    """

    layer: int
    expert: int
    label: str = ""
    kind: str | None = None
    status: str = "ok"
    scores: tuple[tuple[str, str], ...] = ()
    sort_values: dict[str, float | int] = field(default_factory=dict)
    contexts: tuple[CardContext, ...] = ()
    lens_tokens: tuple[str, ...] = ()
    histogram: tuple[tuple[int, ...], tuple[float, float]] | None = None
    histogram_caption: str = ""
    domains: tuple[tuple[str, float, float], ...] = ()
    effects: tuple[tuple[str, str], ...] = ()

    @property
    def anchor(self) -> str:
        return f"expert-{self.layer}-{self.expert}"


@dataclass(frozen=True)
class DashboardBlock:
    """A dashboard in a report section: an index of experts and their cards (inline, or one page per
    layer when there are more than ``max_inline`` cards)."""

    name: str
    caption: str
    cards: tuple[ExpertCard, ...]
    max_inline: int = MAX_INLINE_CARDS

    @property
    def paged(self) -> bool:
        return len(self.cards) > self.max_inline

    def layers(self) -> list[int]:
        return sorted({card.layer for card in self.cards})


def layer_page_path(name: str, layer: int) -> str:
    """Path, relative to ``index.html``, of the page holding layer ``layer``'s cards of dashboard ``name``."""
    return f"{PAGES_DIR}/{name}-layer-{layer}.html"


_CONTROL = {c: chr(0x2400 + c) for c in range(32) if chr(c) not in "\n\t\r"} | {127: "␡"}


def _visible(token: str) -> str:
    """``token`` as shown: newline as ⏎ (then a line break), tab ⇥, other control characters as their
    Unicode control pictures (a NUL would otherwise reach the page raw)."""
    return token.replace("\n", "⏎\n").replace("\t", "⇥").replace("\r", "␍").translate(_CONTROL)


def _strength_style(strength: float, top: float) -> str:
    """Background colour of a token: orange with opacity its weight relative to the context's top."""
    if not math.isfinite(strength) or strength <= 0 or top <= 0:
        return ""
    alpha = max(0.08, min(1.0, strength / top))
    return f' style="background:rgba(255,140,0,{alpha:.2f})"'


def _context_html(context: CardContext) -> str:
    finite = [s for s in context.strengths if math.isfinite(s)]
    top = max(finite, default=0.0)
    spans = []
    for i, (token, strength, marked) in enumerate(
        zip(context.tokens, context.strengths, context.marks, strict=True)
    ):
        text = escape(_visible(token))
        if not marked and i != context.target:
            spans.append(text)  # not routed to the expert: plain text, no colour
            continue
        classes = "tok" + (" routed" if marked else "") + (" target" if i == context.target else "")
        weight = f"routing weight {strength:.3f}" if math.isfinite(strength) else "routing weight unknown"
        spans.append(
            f'<span class="{classes}" title="{weight}"{_strength_style(strength, top)}>{text}</span>'
        )
    source = f"{context.domain}; saliency {context.saliency:.3g}"
    return f'<div class="ctx">{"".join(spans)}<span class="src">{escape(source)}</span></div>'


def _histogram_svg(counts: Sequence[int], width: int = 220, height: int = 44) -> str:
    """Bars of ``counts`` as inline SVG (no text inside, so nothing to escape)."""
    top = max(counts, default=0) or 1
    bar = width / max(len(counts), 1)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - height * c / top:.1f}" width="{max(bar - 1, 1):.1f}" '
        f'height="{height * c / top:.1f}"></rect>'
        for i, c in enumerate(counts)
        if c
    )
    return (
        f'<svg class="hist" width="{width}" height="{height + 1}" viewBox="0 0 {width} {height + 1}" '
        f'role="img" aria-label="histogram">{rects}<line x1="0" y1="{height + 0.5}" x2="{width}" '
        f'y2="{height + 0.5}"></line></svg>'
    )


def _domains_html(domains: Sequence[tuple[str, float, float]]) -> str:
    rows = []
    for name, share, base in domains:
        fill = 100 * min(max(share, 0.0), 1.0)
        mark = 100 * min(max(base, 0.0), 1.0)
        rows.append(
            f'<tr><td>{escape(name)}</td><td><span class="bar"><span class="fill" style="width:{fill:.1f}%">'
            f'</span><span class="base" style="left:{mark:.1f}%"></span></span> {share:.0%}</td></tr>'
        )
    return '<table class="domains"><tbody>' + "".join(rows) + "</tbody></table>"


def card_html(card: ExpertCard) -> str:
    """One card as an ``<article>`` (every text escaped)."""
    title = f"Layer {card.layer} · expert {card.expert}"
    parts = [f'<article class="card" id="{card.anchor}"><h3>{escape(title)}</h3>']
    if card.label:
        kind = f" ({card.kind})" if card.kind else ""
        parts.append(f'<div><span class="label">{escape(card.label)}</span>{escape(kind)}</div>')
    if card.status != "ok":
        parts.append(f'<div class="status">{escape(card.status)}</div>')
    if card.scores:
        parts.append(
            '<div class="scores">'
            + "<br>".join(f"{escape(k)}: {escape(v)}" for k, v in card.scores)
            + "</div>"
        )
    if card.effects:
        parts.append("<h4>Causal effect</h4>")
        parts.append(
            '<div class="scores">'
            + "<br>".join(f"{escape(k)}: {escape(v)}" for k, v in card.effects)
            + "</div>"
        )
    if card.contexts:
        parts.append("<h4>Top contexts</h4>")
        parts.extend(_context_html(context) for context in card.contexts)
    if card.lens_tokens:
        parts.append("<h4>Logit lens</h4>")
        codes = "".join(f"<code>{escape(_visible(t))}</code>" for t in card.lens_tokens)
        parts.append(f'<div class="lens">{codes}</div>')
    if card.histogram is not None:
        counts, (low, high) = card.histogram
        parts.append(f"<h4>{escape(card.histogram_caption or 'Histogram')}</h4>")
        parts.append(_histogram_svg(counts))
        parts.append(f'<div class="hist-axis"><span>{low:.3g}</span><span>{high:.3g}</span></div>')
    if card.domains:
        parts.append("<h4>Routing share per domain (mark: share of all tokens)</h4>")
        parts.append(_domains_html(card.domains))
    parts.append("</article>")
    return "".join(parts)


def _sort_columns(cards: Sequence[ExpertCard]) -> list[str]:
    columns: list[str] = []
    for card in cards:
        for name in card.sort_values:
            if name not in columns:
                columns.append(name)
    return columns


def _value_cell(value: float | None) -> str:
    """A sortable index cell: a count (an int) as an integer, any other value to 3 decimals."""
    if value is None or not math.isfinite(value):
        return '<td class="num" data-v="NaN">–</td>'
    shown = f"{value:d}" if isinstance(value, int) else f"{value:.3f}"
    return f'<td class="num" data-v="{value!r}">{shown}</td>'


def index_html(block: DashboardBlock, link_prefix: str = "") -> str:
    """The sortable index of ``block``'s experts; each row links to its card (on its layer's page when
    paged; ``link_prefix`` is the path from the page holding the index to the report's root)."""
    columns = _sort_columns(block.cards)
    header = '<th data-sort="1">layer</th><th data-sort="1">expert</th><th>label</th>' + "".join(
        f'<th data-sort="1">{escape(c)}</th>' for c in columns
    )
    rows = []
    for card in block.cards:
        page = link_prefix + layer_page_path(block.name, card.layer) if block.paged else ""
        link = f'<a href="{escape(page)}#{card.anchor}">{escape(card.label or card.status)}</a>'
        cells = "".join(_value_cell(card.sort_values.get(c)) for c in columns)
        rows.append(
            f'<tr><td class="num" data-v="{card.layer}">{card.layer}</td>'
            f'<td class="num" data-v="{card.expert}">{card.expert}</td><td>{link}</td>{cells}</tr>'
        )
    return (
        f'<div class="scroll"><table class="sortable" id="index-{escape(block.name)}"><thead><tr>{header}</tr></thead>'
        "<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )


def cards_html(cards: Sequence[ExpertCard]) -> str:
    return '<div class="cards">\n' + "\n".join(card_html(card) for card in cards) + "\n</div>"

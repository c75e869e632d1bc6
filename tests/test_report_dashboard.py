"""The expert dashboard of the report: cards, colours, histogram, index, pages per layer, escaping,
and (when Chromium is installed) the browser check of benchmarks/check_report_in_browser.py."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from test_report import parse
from tl_moe.report import Report
from tl_moe.report.dashboard import SORT_SCRIPT, CardContext, ExpertCard

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert('x')</script> & <b>"


def _card(layer: int, expert: int, text: str = "tok", accuracy: float = 0.5) -> ExpertCard:
    context = CardContext(
        tokens=(" a", text, "\n", " c"),
        strengths=(0.0, 0.2, 0.4, 0.0),
        marks=(False, True, True, False),
        target=2,
        saliency=1.5,
        domain="prose",
    )
    return ExpertCard(
        layer=layer,
        expert=expert,
        label=f"label {text}",
        kind="tokens",
        scores=(("balanced accuracy", f"{accuracy:.3f}"),),
        sort_values={"balanced accuracy": accuracy, "F1": math.nan},
        contexts=(context,),
        lens_tokens=(text, " the"),
        histogram=((0, 3, 1), (0.5, 2.0)),
        histogram_caption="Saliency",
        domains=((text, 0.75, 0.25), ("code", 0.25, 0.75)),
        effects=(("drivers", "0.0100 [0.0050, 0.0150]"),),
    )


def _report(tmp_path: Path, cards: list[ExpertCard], max_inline: int = 64) -> Path:
    report = Report("dashboard", tmp_path)
    report.add_section("Labels", key="explain").add_dashboard(
        cards, "experts", "The cards.", max_inline=max_inline
    )
    return report.write()


def test_tokens_are_coloured_by_their_weight_relative_to_the_context_top_and_routed_ones_marked(tmp_path):
    page = _report(tmp_path, [_card(0, 0)]).read_text()
    card = re.search(r'<article class="card" id="expert-0-0">.*?</article>', page, re.S).group(0)
    spans = re.findall(r'<span class="(tok[^"]*)" title="([^"]*)"( style="[^"]*")?>([^<]*)</span>', card)
    # " a" and " c" were not routed: plain text, no colour; weights 0.2 and 0.4 of a top of 0.4
    assert [(cls, title, style, text) for cls, title, style, text in spans] == [
        ("tok routed", "routing weight 0.200", ' style="background:rgba(255,140,0,0.50)"', "tok"),
        ("tok routed target", "routing weight 0.400", ' style="background:rgba(255,140,0,1.00)"', "⏎\n"),
    ]
    assert card.split('class="ctx">')[1].startswith(' a<span class="tok routed"')  # " a" is bare text
    assert '</span> c<span class="src">' in card


def test_histogram_bars_are_counts_scaled_to_the_tallest(tmp_path):
    page = _report(tmp_path, [_card(0, 0)]).read_text()
    rects = re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', page)
    width = 220 / 3  # three bins over 220 px; the empty bin draws nothing
    assert [tuple(float(v) for v in r) for r in rects] == [
        (round(width, 1), 0.0, round(width - 1, 1), 44.0),
        (round(2 * width, 1), round(44 - 44 / 3, 1), round(width - 1, 1), round(44 / 3, 1)),
    ]


def test_index_sorts_by_numbers_and_links_every_card(tmp_path):
    cards = [_card(0, e, accuracy=a) for e, a in enumerate((0.9, 0.6))]
    page = parse(_report(tmp_path, cards))
    assert {"expert-0-0", "expert-0-1", "index-experts"} <= page.ids
    assert ["0", "1", "label tok", "0.600", "–"] in page.rows
    assert "#expert-0-1" in page.hrefs
    assert page.tags.count("script") == 1 and page.tags.count("article") == 2


def test_many_experts_get_one_page_per_layer(tmp_path):
    cards = [_card(layer, e) for layer in (0, 3) for e in range(40)]
    index = _report(tmp_path, cards, max_inline=64)
    page = parse(index)
    assert "article" not in page.tags  # cards live on the layer pages
    assert "experts/experts-layer-3.html#expert-3-39" in page.hrefs
    for layer in (0, 3):
        layer_page = parse(tmp_path / "experts" / f"experts-layer-{layer}.html")
        assert layer_page.tags.count("article") == 40
        assert f"expert-{layer}-7" in layer_page.ids and "../index.html#dashboard-experts" in layer_page.hrefs
    results = json.loads((tmp_path / "results.json").read_text())["sections"]["explain"]["dashboards"]
    assert results == {
        "experts": {"experts": 80, "pages": ["experts/experts-layer-0.html", "experts/experts-layer-3.html"]}
    }


def test_hostile_text_in_cards_is_escaped_and_the_only_script_is_the_sort(tmp_path):
    card = _card(0, 0, text=EVIL)
    card = ExpertCard(**{**card.__dict__, "status": EVIL, "effects": ((EVIL, EVIL),)})
    for max_inline in (64, 0):  # inline, then paged
        index = _report(tmp_path / str(max_inline), [card], max_inline=max_inline)
        pages = [index, *sorted((tmp_path / str(max_inline) / "experts").glob("*.html"))]
        for path in pages:
            page = parse(path)
            assert "b" not in page.tags and page.tags.count("script") == 1
            scripts = re.findall(r"<script>(.*?)</script>", path.read_text(), re.S)
            assert scripts == [SORT_SCRIPT]
        shown = "".join(parse(pages[-1]).text)
        assert shown.count(EVIL) >= 5  # label, status, effect name and value, lens, domain, context


def test_a_report_without_a_dashboard_has_no_script(tmp_path):
    report = Report("plain", tmp_path)
    report.add_section("A").add_text("text")
    assert "script" not in parse(report.write()).tags


def _browser_check():
    spec = importlib.util.spec_from_file_location(
        "check_report", ROOT / "benchmarks" / "check_report_in_browser.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboard_renders_in_headless_chromium(tmp_path):
    check = _browser_check()
    if check.find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    report = Report("dashboard", tmp_path)
    report.add_findings(["A finding."])
    report.add_section("Labels", key="explain").add_dashboard(
        [_card(0, e, EVIL) for e in range(3)], "experts"
    )
    report.write()
    assert check.check(tmp_path) == []
    blank = ExpertCard(layer=1, expert=0, contexts=(), status="")
    (tmp_path / "index.html").unlink()
    report.add_section("More", key="more").add_dashboard([blank], "blank")
    report.write()
    assert any("blank expert cards" in problem for problem in check.check(tmp_path))


def test_card_effects_come_from_the_label_checks_and_the_drivers_tables():
    import pandas as pd

    from tl_moe.pipeline.results.explain_dashboard import _effects

    causal = pd.DataFrame(
        {"layer": [1], "expert": [2], "remove_effect": [0.25], "remove_labeled_minus_control": [0.125]}
    )
    drivers = pd.DataFrame({"layer": [1, 1], "expert": [2, 3], "remove: effect (report)": [0.5, 0.1],
                            "remove: report ci low": [0.25, float("nan")], "remove: report ci high": [0.75, float("nan")]})  # fmt: skip
    lines, sort = _effects(
        (1, 2), causal.set_index(["layer", "expert"]), drivers.set_index(["layer", "expert"])
    )
    assert [value for _, value in lines] == [
        "0.2500 nats/token; labeled − control expert 0.1250",
        "0.5000 [0.250, 0.750]",
    ]
    assert sort == {"label causal effect": 0.25, "drivers effect": 0.5}
    lines, sort = _effects((1, 3), None, drivers.set_index(["layer", "expert"]))
    assert [value for _, value in lines] == ["0.1000 (no interval)"] and sort == {"drivers effect": 0.1}
    drivers["remove: report interval unavailable"] = ["", "12 document(s) behind the effect"]
    lines, _ = _effects((1, 3), None, drivers.set_index(["layer", "expert"]))
    assert [value for _, value in lines] == ["0.1000 (no interval: 12 document(s) behind the effect)"]
    assert _effects((0, 0), None, None) == ((), {})


def test_control_characters_of_tokens_are_drawn_not_written_raw(tmp_path):
    card = ExpertCard(layer=0, expert=0, label="x", lens_tokens=("\x00", "a\x1bb", "\t"))
    page = _report(tmp_path, [card]).read_text()
    assert "\x00" not in page and "\x1b" not in page
    assert "<code>␀</code><code>a␛b</code><code>⇥</code>" in page


def test_index_shows_counts_as_integers_and_other_values_to_three_decimals():
    from tl_moe.report.dashboard import _value_cell

    assert _value_cell(1955) == '<td class="num" data-v="1955">1955</td>'
    assert _value_cell(0.5) == '<td class="num" data-v="0.5">0.500</td>'
    assert _value_cell(float("nan")) == '<td class="num" data-v="NaN">–</td>'

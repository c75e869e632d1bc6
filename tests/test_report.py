"""The HTML report writer and the figure helpers, checked by parsing what they write."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib._pylab_helpers import Gcf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from tl_moe.report import Report, bar_plot, heatmap, line_plot, markdown_to_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """Collects what a reader (or browser) would see in a page: tags, ids, links, headings, text, table rows."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.h2: list[str] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []  # body rows of every table, cells as text
        self._heading: list[str] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if "src" in attrs:
            self.srcs.append(attrs["src"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "h2":
            self._heading = []
        if tag == "thead":
            self._in_head = True
        if tag == "tr" and not self._in_head:
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "h2" and self._heading is not None:
            self.h2.append("".join(self._heading))
            self._heading = None
        if tag == "thead":
            self._in_head = False
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        for sink in (self._heading, self._cell):
            if sink is not None:
                sink.append(data)


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def scores_frame(n_rows: int = 100) -> pd.DataFrame:
    """A table with a distinct, hand-predictable value in every row."""
    i = np.arange(n_rows)
    return pd.DataFrame({"layer": i % 4, "concept": [f"concept_{k:03d}" for k in i], "f1": 0.5 + i / 1000})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = Report("Analysis of toy/moe-16x2", out)
    probing = report.add_section("k-sparse probing", key="probing", intro="Probes on expert neurons.")
    curve = pd.DataFrame(
        {"k": [1, 2, 4] * 2, "f1": [0.6, 0.7, 0.8, 0.5, 0.55, 0.6], "model": ["moe"] * 3 + ["dense"] * 3}
    )
    probing.add_figure(
        line_plot(curve, "k", "f1", "model", "F1 by k", "k", "F1", logx=True), "f1_by_k", "F1 by k."
    )
    probing.add_table(scores_frame(), "scores", "Scores per concept.")
    probing.add_metrics({"mean_f1": np.float64(0.93), "n_experts": np.int64(16), "undefined": float("nan")})
    domains = report.add_section("Domain experts")
    domains.add_figure(heatmap(np.eye(3), title="Routing"), "routing", "Routing by domain.")
    domains.add_metrics({"entropy_bits": 1.5})
    report.add_metadata({"settings": {"seed": 0, "max_tokens": 60000}, "versions": {"python": "3.11"}})
    index = report.write()
    return report, out, index


def test_writes_page_figures_tables_and_results(built):
    report, out, index = built
    assert index == out / "index.html"
    for name in ("index.html", "results.json", "tables/scores.csv", "tables/scores.parquet"):
        assert (out / name).is_file(), name
    page = parse(index)
    assert page.h2[:1] == ["Contents"]
    assert "k-sparse probing" in page.h2 and "Domain experts" in page.h2
    assert "Settings and metadata" == page.h2[-1]
    # Every table-of-contents link points at an element of the page.
    internal = [href[1:] for href in page.hrefs if href.startswith("#")]
    assert len(internal) == 3 and set(internal) <= page.ids


def test_images_resolve_to_150_dpi_pngs(built):
    _, out, index = built
    page = parse(index)
    assert len(page.srcs) == 2
    for src in page.srcs:
        path = index.parent / src
        assert path.is_file(), src
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            assert image.info["dpi"] == pytest.approx((150, 150), abs=0.1)


def test_table_shows_first_rows_and_saves_all(built):
    _, out, index = built
    page = parse(index)
    first = ["0", "concept_000", "0.5"]  # layer 0 % 4, name of row 0, f1 = 0.5 + 0 / 1000
    start = page.rows.index(first)
    shown = page.rows[start : start + 30]
    assert [row[1] for row in shown] == [f"concept_{k:03d}" for k in range(30)]
    assert shown[29] == ["1", "concept_029", "0.529"]
    html = index.read_text(encoding="utf-8")
    assert "concept_030" not in html and "concept_099" not in html
    expected = scores_frame()
    pd.testing.assert_frame_equal(pd.read_csv(out / "tables/scores.csv"), expected)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "tables/scores.parquet"), expected)


def test_results_json_round_trips_metrics_and_metadata(built):
    _, out, _ = built
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(results["sections"]) == ["probing", "domain-experts"]
    assert results["sections"]["probing"]["metrics"] == {"mean_f1": 0.93, "n_experts": 16, "undefined": None}
    assert results["sections"]["domain-experts"]["metrics"] == {"entropy_bits": 1.5}
    assert results["sections"]["probing"]["figures"] == {"f1_by_k": "figures/f1_by_k.png"}
    assert results["sections"]["probing"]["tables"]["scores"]["n_rows"] == 100
    assert results["metadata"] == {
        "settings": {"seed": 0, "max_tokens": 60000},
        "versions": {"python": "3.11"},
    }


def test_metrics_and_settings_are_shown(built):
    _, _, index = built
    rows = parse(index).rows
    assert ["mean_f1", "0.93"] in rows and ["n_experts", "16"] in rows
    assert ["seed", "0"] in rows and ["max_tokens", "60000"] in rows


def test_page_is_offline_and_script_free(built):
    _, _, index = built
    page = parse(index)
    assert "script" not in page.tags and "link" not in page.tags
    for url in page.srcs + page.hrefs:
        assert not url.startswith(("http:", "https:", "//", "data:", "javascript:")), url


def test_text_everywhere_is_escaped(tmp_path):
    evil = "<script>alert('x')</script> & <b>"
    report = Report(evil, tmp_path)
    section = report.add_section(evil, intro=evil)
    section.add_text(evil)
    section.add_table(pd.DataFrame({evil: [evil]}), "t", evil)
    section.add_metrics({evil: evil})
    report.add_metadata({evil: {evil: evil}})
    page = parse(report.write())
    assert "script" not in page.tags and "b" not in page.tags
    text = "".join(page.text)
    assert text.count(evil) >= 8  # title x2, heading, toc, intro, text, caption, cells, metadata


def test_markdown_subset():
    assert markdown_to_html("Plain **bold** and `x < y` here.") == (
        "<p>Plain <strong>bold</strong> and <code>x &lt; y</code> here.</p>"
    )
    assert markdown_to_html("`**not bold**`") == "<p><code>**not bold**</code></p>"
    assert markdown_to_html("2 * 3 * 4") == "<p>2 * 3 * 4</p>"
    assert markdown_to_html("Intro\nline two\n\n- one\n- **two**\n  continued\n\nAfter") == (
        "<p>Intro line two</p>\n<ul><li>one</li><li><strong>two</strong> continued</li></ul>\n<p>After</p>"
    )
    assert markdown_to_html("  indented\n  block") == "<p>indented block</p>"
    assert markdown_to_html("   \n") == ""


def test_markdown_renders_in_page(tmp_path):
    report = Report("r", tmp_path)
    report.add_section("s").add_text("Use **care** with `tl_moe`:\n\n* one\n* two")
    html = report.write().read_text(encoding="utf-8")
    section = html[html.index('<section id="section-s">') : html.index('<section id="settings">')]
    assert "<p>Use <strong>care</strong> with <code>tl_moe</code>:</p>" in section
    assert "<ul><li>one</li><li>two</li></ul>" in section


def test_write_again_is_identical_and_picks_up_new_sections(tmp_path):
    report = Report("r", tmp_path)
    section = report.add_section("First")
    section.add_table(scores_frame(5), "five")
    section.add_metrics({"a": 1})
    index = report.write()
    first = (index.read_bytes(), (tmp_path / "results.json").read_bytes())
    report.write()
    assert (index.read_bytes(), (tmp_path / "results.json").read_bytes()) == first
    report.add_section("Second", key="second").add_metrics({"b": 2})
    report.write()
    assert "Second" in parse(index).h2
    assert json.loads((tmp_path / "results.json").read_text())["sections"]["second"]["metrics"] == {"b": 2}


def test_table_with_index_and_mixed_objects(tmp_path):
    frame = pd.DataFrame({0: [1.5, 2.5], "mixed": [1, "two"]}, index=pd.Index(["e0", "e1"], name="expert"))
    report = Report("r", tmp_path)
    report.add_section("s").add_table(frame, "mixed")
    page = parse(report.write())
    assert ["e0", "1.5", "1"] in page.rows and ["e1", "2.5", "two"] in page.rows
    saved = pd.read_parquet(tmp_path / "tables/mixed.parquet")
    assert saved.index.tolist() == ["e0", "e1"] and saved.columns.tolist() == ["0", "mixed"]
    assert saved["mixed"].tolist() == ["1", "two"]
    assert pd.read_csv(tmp_path / "tables/mixed.csv", index_col="expert")["0"].tolist() == [1.5, 2.5]


def test_rejects_bad_input(tmp_path):
    report = Report("r", tmp_path)
    section = report.add_section("s", key="s")
    for bad in ("../escape", "has space", "", "-leading"):
        with pytest.raises(ValueError, match="not accepted"):
            section.add_table(scores_frame(2), bad)
    section.add_table(scores_frame(2), "t")
    with pytest.raises(ValueError, match="already"):
        section.add_table(scores_frame(2), "t")
    with pytest.raises(ValueError, match="already exists"):
        report.add_section("again", key="s")
    with pytest.raises(TypeError, match="DataFrame"):
        section.add_table([[1, 2]], "list")
    with pytest.raises(ValueError, match="max_rows"):
        section.add_table(scores_frame(2), "u", max_rows=0)
    with pytest.raises(TypeError, match="Figure"):
        section.add_figure("figure.png", "f")
    with pytest.raises(TypeError, match="str keys"):
        section.add_metrics({1: 0.5})
    with pytest.raises(TypeError, match="cannot be written to JSON"):
        section.add_metrics({"x": object()})


def test_add_figure_closes_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    report = Report("r", tmp_path)
    report.add_section("s").add_figure(fig, "pyplot_made")
    assert not plt.fignum_exists(fig.number)
    assert (tmp_path / "figures/pyplot_made.png").is_file()


# --- figure helpers ------------------------------------------------------------------------------


def test_helpers_leave_global_state_alone():
    backend, managers = matplotlib.get_backend(), Gcf.get_num_fig_managers()
    fig = line_plot(pd.DataFrame({"x": [1, 2], "y": [3, 4]}), "x", "y")
    assert isinstance(fig.canvas, FigureCanvasAgg) and fig.canvas.manager is None
    assert matplotlib.get_backend() == backend and Gcf.get_num_fig_managers() == managers


def test_line_plot_one_sorted_line_per_hue():
    frame = pd.DataFrame(
        {"k": [4, 1, 2, 2, 1], "f1": [0.9, 0.5, 0.7, 0.4, 0.3], "model": ["a", "a", "a", "b", "b"]}
    )
    ax = line_plot(frame, "k", "f1", "model", "t", "k", "F1", logx=True).axes[0]
    lines = {
        line.get_label(): (line.get_xdata().tolist(), line.get_ydata().tolist()) for line in ax.get_lines()
    }
    assert lines == {"a": ([1, 2, 4], [0.5, 0.7, 0.9]), "b": ([1, 2], [0.3, 0.4])}
    assert all(line.get_marker() not in (None, "None", "") for line in ax.get_lines())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.get_xscale() == "log" and ax.get_title() == "t" and ax.get_ylabel() == "F1"
    with pytest.raises(ValueError, match="one row per"):
        line_plot(pd.concat([frame, frame]), "k", "f1", "model")
    with pytest.raises(KeyError, match="not in the frame"):
        line_plot(frame, "k", "missing")


def test_heatmap_values_labels_and_annotations():
    matrix = np.array([[0.125, 0.5, np.nan], [1.0, 0.25, 0.75]])
    fig = heatmap(matrix, ["r0", "r1"], ["a", "b", "c"], "H", "magma", "p", annotate=True)
    ax = fig.axes[0]
    shown = ax.get_images()[0].get_array()
    assert shown.mask.tolist() == [[False, False, True], [False, False, False]]
    assert shown.filled(-1).tolist() == [[0.125, 0.5, -1], [1.0, 0.25, 0.75]]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["0.12", "0.50", "1.00", "0.25", "0.75"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["r0", "r1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "p"  # the colour bar
    with pytest.raises(ValueError, match="one label per row"):
        heatmap(matrix, ["only one"], ["a", "b", "c"])


def test_bar_plot_heights_and_gaps():
    frame = pd.DataFrame(
        {"concept": ["x", "y", "x"], "f1": [0.2, 0.4, 0.6], "model": ["moe", "moe", "dense"]}
    )
    ax = bar_plot(frame, "concept", "f1", "model").axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    # hue order "moe", "dense" (first appearance); categories "x", "y"; dense has no "y" bar (NaN).
    assert heights[:3] == [0.2, 0.4, 0.6] and np.isnan(heights[3])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y"]
    widths = [
        patch.get_width()
        for patch in bar_plot(frame, "concept", "f1", "model", horizontal=True).axes[0].patches
    ]
    assert widths[:3] == [0.2, 0.4, 0.6]
    with pytest.raises(ValueError, match="one row per"):
        bar_plot(pd.concat([frame, frame]), "concept", "f1", "model")


def test_whitespace_tokens_are_visible_and_integral_floats_read_as_counts(tmp_path):
    import pandas as pd

    from tl_moe.report import Report
    from tl_moe.report.html import format_value

    assert format_value("\n") == "⏎"
    assert format_value(" the") == "·the"
    assert format_value("  ") == "··"
    assert format_value("") == "∅"
    assert format_value("a b") == "a b"
    assert format_value(12220.0) == "12220" and format_value(126) == "126" and format_value(0.5) == "0.5"
    report = Report("t", tmp_path)
    section = report.add_section("Tokens", key="tokens")
    section.add_table(pd.DataFrame({"token": ["\n", " the"], "n": [126.0, 12220.0]}), "tokens")
    report.add_findings(["**Headline** with `code`"])
    html = report.write().read_text()
    assert "<td>⏎</td>" in html and "<td>·the</td>" in html and ">12220<" in html
    assert 'class="findings"' in html and "<strong>Headline</strong>" in html
    assert html.index('class="findings"') < html.index('class="toc"')
    import json

    assert json.loads((tmp_path / "results.json").read_text())["findings"] == ["**Headline** with `code`"]

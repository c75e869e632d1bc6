"""Long tables are summarized on the page (counts by status, score quantiles per group, top rows) and
linked in full; short ones are shown whole. Checked against pandas / NumPy computed here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from test_report import parse
from tl_moe.report import Report, TableSummary
from tl_moe.report.html import format_value
from tl_moe.report.summary import QUANTILES


def units_frame(n_rows: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A per-unit probe table: most rows too small to probe (status not_enough_samples, F1 missing)."""
    rng = np.random.default_rng(seed)
    layer = rng.integers(0, 3, n_rows)
    k = rng.choice([1, 4], n_rows)
    ok = rng.random(n_rows) < 0.2
    f1 = np.where(ok, rng.random(n_rows).round(6), np.nan)
    return pd.DataFrame(
        {
            "unit": [f"L{a}E{b}" for a, b in zip(layer, rng.integers(0, 64, n_rows), strict=True)],
            "layer": layer,
            "concept": rng.choice(["code_keyword", "latex_command", "digit"], n_rows),
            "k": k,
            "f1": f1,
            "status": np.where(ok, "ok", "not_enough_samples"),
            "n_pos": rng.integers(0, 100, n_rows),
        }
    )


SUMMARY = TableSummary(score="f1", by=("layer", "k"), columns=("unit", "layer", "k", "f1"), top=15)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("summaries")
    report = Report("Summaries", out)
    section = report.add_section("Probing", key="probing")
    big = units_frame()
    section.add_table(big, "units", "Every probe.", max_rows=20, summary=SUMMARY)
    small = units_frame(12, seed=1)
    section.add_table(small, "few_units", "A few probes.", max_rows=20, summary=SUMMARY)
    section.add_table(
        units_frame(300, seed=2).drop(columns="status"), "plain", "No summary given.", max_rows=25
    )
    index = report.write()
    return section, big, small, index


def test_a_long_table_is_summarized_with_counts_quantiles_and_top_rows(page):
    section, big, _, index = page
    block = section.blocks[0]
    parts = dict(block.summary)
    assert list(parts) == [
        "Rows by status",
        "Distribution of f1 by layer, k",
        "Top 15 rows by f1 (largest)",
    ]
    counts = parts["Rows by status"].set_index("status")["rows"]
    assert counts.to_dict() == big["status"].value_counts().to_dict()
    assert counts.sum() == len(big) and counts.index[0] == "not_enough_samples"

    quantiles = parts["Distribution of f1 by layer, k"]
    assert len(quantiles) == big.groupby(["layer", "k"]).ngroups == 6
    for row in quantiles.itertuples(index=False):
        group = big[(big["layer"] == row.layer) & (big["k"] == row.k)]["f1"]
        present = group.dropna()
        assert row.n == len(present) and row.missing == group.isna().sum()
        assert row.mean == pytest.approx(present.mean(), rel=1e-12)
        for q, value in zip(
            QUANTILES, (row.min, row.q10, row.q25, row.q50, row.q75, row.q90, row.max), strict=True
        ):
            assert value == pytest.approx(present.quantile(q), rel=1e-12), (row.layer, row.k, q)

    top = parts["Top 15 rows by f1 (largest)"]
    expected = big.dropna(subset=["f1"]).sort_values("f1", ascending=False).head(15)
    assert list(top.columns) == ["unit", "layer", "k", "f1"]
    assert top["f1"].tolist() == expected["f1"].tolist()
    assert top["unit"].tolist() == expected["unit"].tolist()

    # The page shows those numbers (formatted), not the table's first rows.
    shown = parse(index)
    for row in quantiles.itertuples(index=False):
        assert [format_value(v) for v in row] in shown.rows
    assert [format_value(v) for v in top.iloc[0]] in shown.rows
    html = index.read_text(encoding="utf-8")
    assert "6000 rows, summarized below" in html
    shown_here = html[html.index('id="table-units"') : html.index('id="table-few_units"')]
    assert shown_here.count("<tr><td") == sum(len(part) for part in parts.values()) == 2 + 6 + 15


def test_the_full_table_is_linked_by_a_relative_path_that_exists(page):
    section, big, _, index = page
    links = [href for href in parse(index).hrefs if "units" in href and "few" not in href]
    assert links == ["tables/units.csv", "tables/units.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(index.parent / links[1]), big)
    assert len(pd.read_csv(index.parent / links[0])) == len(big)


def test_a_short_table_is_shown_in_full(page):
    section, _, small, index = page
    block = section.blocks[1]
    assert block.summary is None and len(block.head) == len(small) == 12
    rows = parse(index).rows
    for values in small.itertuples(index=False):
        assert [format_value(v) for v in values] in rows
    assert "all 12 rows" in index.read_text(encoding="utf-8")


def test_without_a_summary_every_numeric_column_is_described_and_the_first_rows_shown(page):
    section, _, _, index = page
    parts = dict(section.blocks[2].summary)
    frame = units_frame(300, seed=2).drop(columns="status")
    described = parts["Distribution of every numeric column"].set_index("column")
    assert list(described.index) == ["layer", "k", "f1", "n_pos"]
    assert described.loc["n_pos", "q50"] == pytest.approx(frame["n_pos"].median())
    assert described.loc["f1", "missing"] == frame["f1"].isna().sum()
    pd.testing.assert_frame_equal(parts["First 25 rows (in the table's order)"], frame.head(25))


def test_missing_values_are_counted_by_name(tmp_path):
    frame = pd.DataFrame({"token": ["a", None, "a", None, None, "b"] * 10, "logit": np.arange(60.0)})
    section = Report("x", tmp_path).add_section("s")
    section.add_table(frame, "tokens", max_rows=5, summary=TableSummary(score="logit", counts=("token",)))
    counts = dict(section.blocks[0].summary)["Rows by token"]
    assert counts.to_dict("list") == {
        "token": ["(missing)", "a", "b"],
        "rows": [30, 20, 10],
        "share": [0.5, 1 / 3, 1 / 6],
    }


def test_a_summary_naming_a_missing_or_text_column_is_refused(tmp_path):
    section = Report("x", tmp_path).add_section("s")
    with pytest.raises(ValueError, match="'units'.*\\['score'\\]"):
        section.add_table(units_frame(50), "units", summary=TableSummary(score="score"))
    with pytest.raises(ValueError, match="not a numeric column"):
        section.add_table(units_frame(50), "units2", summary=TableSummary(score="unit"))

"""Undefined numbers (None, NaN, infinities) in the report's text: never ``nan``, always
``unavailable (reason)``; an interval over fewer than MIN_DOCUMENTS experts is never computed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tl_moe.analysis.stats import MIN_DOCUMENTS, too_few_units
from tl_moe.report.numbers import format_interval, format_mean_sd, format_number, is_defined

UNDEFINED = [None, math.nan, float("inf"), -math.inf, np.float64("nan"), torch.tensor(float("nan")), pd.NA]


@pytest.mark.parametrize("value", UNDEFINED, ids=repr)
def test_undefined_values_print_unavailable_with_the_reason(value):
    assert not is_defined(value)
    assert format_number(value, ".3f", "no expert") == "unavailable (no expert)"
    assert format_mean_sd(value, 0.1, ".3f", "no expert") == "unavailable (no expert)"
    assert format_interval(value, 0.0, 1.0, "+.2f", "no expert") == "unavailable (no expert)"
    assert format_interval(0.25, value, 1.0, "+.2f", "why", "4 experts") == "+0.25 (no interval: 4 experts)"
    assert format_mean_sd(0.5, value, ".3f", "no expert") == "0.500 (no spread: one unit)"


def test_defined_values_print_as_numbers():
    assert is_defined(np.float32(0.5)) and is_defined(torch.tensor(2)) and is_defined(3)
    assert not is_defined(True) and not is_defined("0.5")
    assert format_number(np.float64(0.12345), ".3f", "x") == "0.123"
    assert format_interval(0.2, 0.1, 0.3, "+.2f", "x") == "+0.20 [+0.10, +0.30]"
    assert format_mean_sd(0.1234, 0.05, ".3f", "x") == "0.123 ± 0.050"


def test_specialization_finding_of_a_layer_without_a_routed_token_says_unavailable():
    from tl_moe.analysis.specialization import specialization_scores
    from tl_moe.pipeline.sections.specialization import SpecializationSummary

    counts = torch.zeros(2, 4, 5)
    counts[0] = torch.randint(1, 20, (4, 5)).float()  # layer 3 (last) has no routed token at all
    summary = SpecializationSummary({"routing, domains": specialization_scores(counts, layers=(1, 3))})
    (finding,) = summary.findings()
    assert "nan" not in finding.lower()
    assert "routing, domains unavailable (no expert of layer 3 was routed a token)" in finding
    counts[1] = counts[0]  # planted: every layer routed, the mean ± sd is printed
    (finding,) = SpecializationSummary(
        {"routing, domains": specialization_scores(counts, layers=(1, 3))}
    ).findings()
    assert " ± " in finding and "unavailable" not in finding


def test_drivers_vs_domain_experts_rho_of_too_few_experts_says_why():
    from tl_moe.analysis.driver_domain import compare_drivers_with_domain_experts
    from tl_moe.pipeline.sections.drivers import DriversResult

    effect = "remove: effect (report)"
    drivers = pd.DataFrame({"layer": [0, 0], "expert": [0, 1], "driver": [True, False], effect: [0.3, 0.1]})
    domains = pd.DataFrame(
        {
            "layer": [0, 0],
            "expert": [0, 1],
            "score": [0.9, 0.2],
            "favoured_domain": "a",
            "domain_expert": [True, False],
            "insufficient_tokens": False,
        }
    )
    comparison = compare_drivers_with_domain_experts(drivers, domains)
    text = DriversResult._domain_finding(SimpleNamespace(domain_overlap=comparison))
    assert "nan" not in text.lower()
    assert "Spearman ρ = unavailable (2 scored experts, at least 3 needed)" in text


def labeling_frame(n_per_layer: int, layers=(0, 1)) -> pd.DataFrame:
    """A planted labeling frame: own labels score 0.8, the shuffled control 0.5, the baseline 0.6 (with noise)."""
    rng = np.random.default_rng(0)
    n = n_per_layer * len(layers)
    return pd.DataFrame(
        {
            "layer": np.repeat(layers, n_per_layer),
            "expert": np.tile(np.arange(n_per_layer), len(layers)),
            "detection_balanced_accuracy": 0.8 + rng.normal(0, 0.05, n),
            "detection_shuffled_balanced_accuracy": 0.5 + rng.normal(0, 0.05, n),
            "detection_baseline_balanced_accuracy": 0.6 + rng.normal(0, 0.05, n),
            "detection_chance_balanced_accuracy": 0.5,
        }
    )


def test_explain_intervals_over_experts_need_min_documents_experts():
    from tl_moe.explain.runner import bootstrap_mean, summarize
    from tl_moe.pipeline.results.explain_findings import labels_finding

    assert too_few_units(MIN_DOCUMENTS - 1) == f"{MIN_DOCUMENTS - 1} experts, at least {MIN_DOCUMENTS} needed"
    assert too_few_units(MIN_DOCUMENTS) is None
    values = np.linspace(0.0, 1.0, MIN_DOCUMENTS - 1)
    mean, low, high = bootstrap_mean(values)
    assert mean == pytest.approx(0.5) and math.isnan(low) and math.isnan(high)
    mean, low, high = bootstrap_mean(np.linspace(0.0, 1.0, MIN_DOCUMENTS))
    assert low < mean < high
    summary = summarize(labeling_frame(4), "detection").set_index("layer")  # 4 experts a layer, 8 in all
    assert summary[["ci low", "ci high", "diff ci low", "baseline diff ci high"]].isna().all().all()
    assert summary.loc[0, "interval unavailable"] == "4 experts, at least 30 needed"
    assert summary.loc["all", "shuffled interval unavailable"] == "8 experts, at least 30 needed"
    row = summary.loc["all"].to_dict()
    text = labels_finding({**row, "layer": "all"}, {}, "offline", "detection", pd.DataFrame())
    assert "nan" not in text.lower()
    assert f"{row['mean']:.3f} (no interval: 8 experts, at least 30 needed)" in text
    assert (
        "no interval over experts: 8 experts, at least 30 needed" in text
        and "95% bootstrap over experts" not in text
    )
    # planted: 20 experts a layer, 40 in all: the pooled row has its interval, each layer has none
    summary = summarize(labeling_frame(20), "detection").set_index("layer")
    assert summary.loc["all", "interval unavailable"] == "" and summary.loc["all", "diff ci low"] > 0.2
    assert summary.loc[0, "interval unavailable"] == "20 experts, at least 30 needed"
    row = summary.loc["all"].to_dict()
    text = labels_finding({**row, "layer": "all"}, {}, "offline", "detection", pd.DataFrame())
    assert f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]" in text
    assert "95% bootstrap over experts" in text


def test_readme_results_cells_say_why_a_number_or_interval_is_missing():
    from readme_results import _cell, _interval

    full = {"estimate": 0.05, "ci_low": 0.01, "ci_high": 0.09, "interval_available": True}
    assert _interval(full) == _cell(full) == "+0.050 [+0.010, +0.090]"
    short = {"estimate": 0.05, "interval_available": False, "interval_unavailable_reason": "12 documents"}
    assert _interval(short) == _cell(short) == "+0.050 (no interval: 12 documents)"
    for estimate in (None, math.nan):
        record = {"estimate": estimate, "interval_unavailable_reason": "no unit probed"}
        assert _interval(record) == "unavailable (no unit probed)" and _cell(record) == "–"


def test_reweighting_rows_say_why_an_interval_or_estimate_is_missing():
    from tl_moe.pipeline.results.reweighting_findings import estimate_text

    def row(estimate, low, high):
        return pd.Series({"gain": estimate, "gain ci low": low, "gain ci high": high})

    assert estimate_text(row(0.1, 0.0, 0.2), "gain") == "+0.1000 [+0.0000, +0.2000]"
    assert (
        estimate_text(row(0.1, math.nan, math.nan), "gain")
        == f"+0.1000 (no interval: 0 documents; a document-level interval needs {MIN_DOCUMENTS})"
    )
    assert estimate_text(row(math.nan, math.nan, math.nan), "gain") == "unavailable (no held-out document)"


def test_layers_whose_f1_is_below_answering_yes_are_named():
    """Planted: layer 1's mean F1 is below its always-yes F1, layer 0's is above; only layer 1 is named."""
    from tl_moe.pipeline.results.explain_findings import _f1_below_chance

    layers = [
        {"layer": 0, "mean": 0.70, "chance": 0.66},
        {"layer": 1, "mean": 0.60, "chance": 0.65},
        {"layer": 2, "mean": math.nan, "chance": 0.65},
    ]
    assert (
        _f1_below_chance(layers)
        == " Mean F1 is below that of answering yes to every item in layer 1 0.600 vs 0.650."
    )
    assert _f1_below_chance(layers[:1]) == ""

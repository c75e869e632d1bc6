"""The planted studies the docs quote: ``benchmarks/planted_studies.py`` writes its rates from the
library's functions, and the docs' blocks word each rate against its nominal level from the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from planted_script import planted_studies
from tl_moe.analysis.reweighting import draw_mean_intervals
from tl_moe.explain.document_bootstrap import share_beating

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "results" / "planted_studies.json"
RATE_FIELDS = {"rate", "hits", "n", "se", "nominal", "nominal_se"}


@pytest.fixture(scope="module")
def studies():
    return planted_studies()


def _check_rate(record: dict, seeds: int | None = None) -> None:
    assert set(record) == RATE_FIELDS
    assert record["rate"] == pytest.approx(record["hits"] / record["n"])
    assert record["se"] == pytest.approx(math.sqrt(record["rate"] * (1 - record["rate"]) / record["n"]))
    assert record["nominal_se"] == pytest.approx(
        math.sqrt(record["nominal"] * (1 - record["nominal"]) / record["n"])
    )
    assert record["nominal"] in (0.95, 0.05, 0.025)
    if seeds is not None:
        assert record["n"] % seeds == 0  # every seed counted once per interval it gives


def test_every_study_runs_at_a_tiny_size_and_records_its_rates(studies):
    for study in studies.STUDIES:
        record = studies.run_study(study, seeds=2, replicates=60)
        assert record["seeds"] == 2 and record["replicates"] == 60 and record["test"].startswith("tests/")
        assert (ROOT / record["test"]).exists()
        for regime in record.get("regimes", {"": record}).values():
            assert regime["rates"]
            for rate in regime["rates"].values():
                _check_rate(rate, seeds=regime.get("seeds", 2))


def test_the_reweighting_rates_are_the_library_intervals_counted(studies):
    """Recomputed here from ``draw_mean_intervals`` on the study's planted cases."""
    record = studies.reweighting_control_draws(3, 80)
    for n_draws in (5, 20):
        hits = 0
        for seed in range(3):
            chosen, draws, counts = studies.reweighting_case(seed, 0.2, n_draws)
            ((interval, _),) = draw_mean_intervals((chosen - draws)[None], counts, n_resamples=80, seed=seed)
            assert interval.method == "t (document bootstrap + between draws)"
            hits += interval.covers(0.0)
        assert record["rates"][f"draw-mean t, {n_draws} draws, draw sd 0.2"]["hits"] == hits
    assert not any("two-stage" in key for key in record["rates"])


def test_the_reweighting_wording_names_the_draw_mean_t_and_judges_each_rate():
    from readme_results import planted_reweighting_markdown

    rates = {}
    for n in (5, 20):
        for sd in ("0.2", "0.05", "0"):
            rates[f"draw-mean t, {n} draws, draw sd {sd}"] = _rate(950 if n == 20 else 900, 1000, 0.95)
            if n == 5:
                rates[f"documents only, {n} draws, draw sd {sd}"] = _rate(165, 1000, 0.95)
    family = {"5 draws, draw sd 0.05": _rate(76, 1000, 0.05), "20 draws, draw sd 0.05": _rate(51, 1000, 0.05)}
    studies = {
        "reweighting_control_draws": {"seeds": 1000, "replicates": 400, "test": "tests/x.py", "rates": rates},
        "reweighting_holm": {"seeds": 1000, "replicates": 400, "test": "tests/x.py", "rates": family},
    }
    text = planted_reweighting_markdown({"studies": studies}, "p.json")
    assert (
        "the draw-mean t interval covers 0 with 5 draws, at a draw sd of 0.2 nats/token in 900 of 1000"
        in text
    )
    assert "below the nominal 0.95" in text and "two-stage" not in text
    assert "with 20 draws, at a draw sd of 0.2 nats/token in 950 of 1000 seeds (0.950" in text
    assert "(the documents-only interval, draws held fixed, in 165 of 1000 seeds" in text
    assert "5 draws, draw sd 0.05: 76 of 1000 runs (0.076, binomial se 0.008), above the nominal 0.05" in text
    assert "20 draws, draw sd 0.05: 51 of 1000 runs (0.051, binomial se 0.007), within two" in text


def test_the_committed_file_holds_every_study_at_its_default_size_with_its_machine():
    results = json.loads(COMMITTED.read_text())
    module = planted_studies()
    assert results["metadata"]["command"].startswith("python benchmarks/planted_studies.py")
    assert {"cpus", "threads", "torch"} <= set(results["metadata"]["machine"])
    assert set(results["studies"]) == {study.name for study in module.STUDIES}
    for study in module.STUDIES:
        record = results["studies"][study.name]
        assert (record["seeds"], record["replicates"], record["test"]) == (
            study.seeds,
            study.replicates,
            study.test,
        )
        for regime in record.get("regimes", {"": record}).values():
            for rate in regime["rates"].values():
                _check_rate(rate, seeds=regime.get("seeds", study.seeds))


def test_the_committed_share_coverage_is_the_scripts_own(studies):
    """One study recomputed in full (the cheapest): the committed count equals a fresh run's, and both
    equal ``share_beating`` counted here on the study's planted scores for the first seeds."""
    committed = json.loads(COMMITTED.read_text())["studies"]["explain_share_null"]
    fresh = studies.explain_share_null(committed["seeds"], committed["replicates"])
    assert fresh["rates"] == committed["rates"]
    assert fresh["truth"] == committed["truth"]
    expected = committed["truth"]["expected share"]
    keys = [(0, e) for e in range(40)]
    own, shuffled = studies.label_scores(0, gain=0.5)
    row = share_beating(keys, own, shuffled, n_resamples=committed["replicates"], seed=0)
    one = studies.explain_share_null(1, committed["replicates"])["rates"]["covers the expected share"]
    assert one["hits"] == int(row["share ci low"] <= expected <= row["share ci high"])


def test_the_shares_truth_counts_a_tie_as_not_beating(studies):
    """The expected share on the planted null is (1 − P(tie)) / 2 by exchangeability, and recounted here
    on the study's own planted scores (the first 100 seeds' 4,000 experts) it agrees within sampling
    error (seeds share their document effects, so the se is widened fourfold)."""
    truth = studies.share_truth()
    assert truth["expected share"] == pytest.approx((1 - truth["P(tie)"]) / 2, abs=4 * truth["se"])
    assert truth["P(tie)"] > 0.05  # balanced accuracy on a 1/40 grid: ties are common
    beats = ties = 0
    for seed in range(100):
        own, shuffled = studies.label_scores(seed, gain=0.5)
        for key in own:
            a, b = own[key].metrics["balanced_accuracy"], shuffled[key].metrics["balanced_accuracy"]
            beats, ties = beats + (a > b), ties + (a == b)
    se = math.sqrt(0.25 / 4000)
    assert beats / 4000 == pytest.approx(truth["expected share"], abs=4 * 4 * se)
    assert ties / 4000 == pytest.approx(truth["P(tie)"], abs=4 * 4 * se)


def _rate(hits: int, n: int, nominal: float) -> dict:
    r = hits / n
    return {"rate": r, "hits": hits, "n": n, "se": math.sqrt(r * (1 - r) / n), "nominal": nominal,
            "nominal_se": math.sqrt(nominal * (1 - nominal) / n)}  # fmt: skip


def test_the_held_out_wording_follows_the_measured_rates_against_five_percent():
    """Planted results: 3-draw t test 92 of 1,000 (two binomial se of 5% over 1,000 is 0.014, so it
    is above), 20 draws 53 of 1,000 (within); then a 3-draw t test at 50 of 1,000 (within)."""
    from readme_results import planted_held_out_draws_markdown

    def results(boot3: int) -> dict:
        rates = {
            "swap test, 3 draws": _rate(246, 1000, 0.05),
            "draw-mean t test, 3 draws": _rate(boot3, 1000, 0.05),
            "swap test, 20 draws": _rate(92, 1000, 0.05),
            "draw-mean t test, 20 draws": _rate(53, 1000, 0.05),
        }
        study = {"seeds": 1000, "replicates": 199, "test": "tests/x.py", "rates": rates,
                 "settings": {"default draws": 3}}  # fmt: skip
        return {"studies": {"held_out_control_draws": study}}

    text = planted_held_out_draws_markdown(results(92), "p.json")
    assert "draw-mean t test 92 of 1000 seeds (0.092, binomial se 0.009), above the nominal 0.05" in text
    assert "t test 53 of 1000 seeds (0.053, binomial se 0.007), within two binomial standard errors" in text
    assert "swap test rejects more often than the draw-mean t test" in text
    assert "slightly liberal" in text
    text = planted_held_out_draws_markdown(results(50), "p.json")
    assert "50 of 1000 seeds (0.050, binomial se 0.007), within two binomial standard errors" in text
    assert "slightly liberal" not in text


def test_a_coverage_far_below_nominal_is_said_to_be_below():
    from readme_results import against_nominal

    assert against_nominal(_rate(177, 200, 0.95)).startswith("below the nominal 0.95")
    assert against_nominal(_rate(186, 200, 0.95)).startswith("within two binomial standard errors")
    assert against_nominal(_rate(199, 200, 0.95)).startswith("above the nominal 0.95")


def test_the_pooled_share_of_a_kinds_intervals_has_its_standard_error_over_seeds(studies):
    """Three intervals per seed share the seed's documents: the se is the sd over seeds of each seed's
    share covered, over √seeds (here by hand), not a binomial se over every interval."""
    covered = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=float)
    record = studies.seed_clustered_rate(covered, 0.95)
    shares = [1, 1 / 3, 2 / 3, 1]
    mean = sum(shares) / 4
    by_hand = math.sqrt(sum((x - mean) ** 2 for x in shares) / 3) / 2
    assert record["rate"] == pytest.approx(9 / 12) and (record["hits"], record["n"], record["seeds"]) == (
        9,
        12,
        4,
    )
    assert record["se over seeds"] == pytest.approx(by_hand)
    assert record["se over seeds"] > math.sqrt(0.75 * 0.25 / 12)  # the binomial se would understate it


def _excess_results(percentile_hits: int) -> dict:
    labels = ("planted strength 0.1", "planted strength 0.5")
    rates, positions, below = {}, {}, {}
    for method, hits in (("percentile", percentile_hits), ("basic", 190), ("BCa", 185)):
        for label in labels:
            rates[f"{method}, {label}"] = _rate(hits, 200, 0.95)
            positions[f"{method}, {label}"] = 0.4 if method == "percentile" else 0.6
            below[f"{method}, {label}"] = 200 - hits - 1
    per_label = {label: 0.01 for label in labels}
    regime = {
        "seeds": 200, "rates": rates,
        "median position of the estimate": positions, "truth": per_label, "large simulation": per_label,
        "misses with the truth below the interval": below,
        "mean estimate": per_label, "sd of the estimate": per_label, "mean bootstrap bias": per_label,
        "pipeline method": ["percentile"],
        "settings": {"documents": 60, "groups": 8, "experts": 8, "slots": 1, "tokens per document": [60, 199],
                     "clumping (Dirichlet concentration)": 0.3, "permutations behind the null mean": 20,
                     "large simulation": {"documents": 10000, "permutations": 4}},
    }  # fmt: skip
    study = {"seeds": 200, "replicates": 500, "test": "tests/x.py", "regimes": {"small": regime}}
    return {"studies": {"excess_interval_coverage": study}}


def test_the_excess_wording_says_plainly_when_the_pipelines_method_under_covers():
    from readme_results import planted_excess_markdown

    text = planted_excess_markdown(_excess_results(160), "p.json")
    assert "percentile (the pipeline's, `excess_intervals`): at strength 0.1 160 of 200 seeds (0.800" in text
    assert "of its interval, the truth below the interval in 39 of its 40 misses" in text
    assert (
        "In this regime the pipeline's percentile interval covers below the nominal rate by more than two binomial"
        in text
    )
    assert "at strength 0.1, 0.5; in 78 of those 80 misses the truth lies below the interval" in text
    assert "The best-covering method per strength: 0.1 basic, 0.5 basic." in text
    text = planted_excess_markdown(_excess_results(189), "p.json")
    assert "covers below the nominal rate" not in text
    assert "covers within two binomial standard errors of the nominal rate or above at every strength" in text


def test_the_driver_holm_wording_names_its_path_and_says_plainly_when_it_over_rejects():
    from readme_results import planted_driver_holm_markdown

    def text(rejected: int) -> str:
        rates = {
            "some domain improved": _rate(14, 400, 0.025),
            "some domain rejected": _rate(rejected, 400, 0.05),
        }
        study = {"seeds": 400, "replicates": 400, "test": "tests/x.py", "rates": rates}
        return planted_driver_holm_markdown({"studies": {"driver_holm_null": study}}, "p.json")

    over = text(30)  # 0.075: 0.025 above 0.05, more than two se (0.022) of a rate at 0.05 over 400 runs
    assert "`holm_adjusted`'s one-draw path" in over
    assert "On this path Holm rejects a true null more often than its nominal 0.05: 0.075 ± 0.013" in over
    assert "more often than its nominal" not in text(24)  # 0.060: within two se


def test_the_within_layer_wording_calls_the_pooled_share_a_power():
    from readme_results import planted_within_layer_markdown

    rates = {
        "within layers (mean) covers 0": _rate(285, 300, 0.95),
        "pooled interval above 0.5": _rate(290, 300, 0.95),
    }
    study = {"seeds": 300, "replicates": 200, "test": "tests/x.py", "rates": rates}
    text = planted_within_layer_markdown({"studies": {"within_layer_rho_null": study}}, "p.json")
    assert "lies above 0.5 in 290 of 300 seeds (a power, not a coverage" in text


def _label_study(rates: dict[str, tuple[int, int]]) -> dict:
    """A ``label_mean_interval_coverage`` record whose two run-shaped cells have these (hits, misses above)
    (190, 5 where not given), the estimate 0.02 below the truth and a bootstrap bias of -0.005."""
    cells = ("run shaped", "run shaped, recall lower in large documents")
    shape = {
        "items per document, max": 222.0,
        "items per document, median": 17.0,
        "mean recall": 0.69,
        "mean specificity": 0.83,
    }
    study = {"seeds": 200, "replicates": 999, "test": "tests/x.py", "pipeline method": "BCa", "rates": {},
             "misses, truth above / below the interval": {}, "median position of the estimate": {}, "means": {},
             "shape": {cell: shape for cell in cells}, "settings": {"documents": 58}}  # fmt: skip
    for cell in cells:
        for metric in ("balanced_accuracy", "f1", "recall"):
            for method in ("percentile", "basic", "BCa"):
                key = f"{cell}, {method}, {metric}"
                hits, above = rates.get(key, (190, 5))
                study["rates"][key] = _rate(hits, 200, 0.95)
                study["misses, truth above / below the interval"][key] = {
                    "above": above,
                    "below": 200 - hits - above,
                }
                study["median position of the estimate"][key] = 0.45
                study["means"][key] = {"truth": 0.75, "estimate": 0.73, "bootstrap bias": -0.005}
    return study


def test_the_explain_headline_quotes_the_planted_coverage_beside_its_interval():
    """The generator puts both run-shaped cells' coverage of the pipeline's method right after the
    headline's interval, and after the finding every mean's coverage by method in each cell, the mean
    estimate − truth beside the bootstrap's bias, the run's estimate position, recall and specificity (from
    its results), and which method covers more often by over two standard errors — per cell where the
    cells differ."""
    from readme_results import explain_markdown

    study = _label_study({"run shaped, BCa, balanced_accuracy": (172, 25), "run shaped, BCa, f1": (170, 28),
                          "run shaped, basic, f1": (185, 11), "run shaped, basic, balanced_accuracy": (174, 19),
                          "run shaped, percentile, balanced_accuracy": (150, 50), "run shaped, percentile, f1": (117, 83),
                          "run shaped, recall lower in large documents, BCa, balanced_accuracy": (180, 8),
                          "run shaped, recall lower in large documents, BCa, f1": (185, 8),
                          "run shaped, recall lower in large documents, basic, f1": (180, 4)})  # fmt: skip
    results = {
        "metadata": {"options": {"split": "validation", "seed": 0, "analyses": ["explain"]}},
        "findings": [
            "**Automatic labels** (offline explainer): mean balanced accuracy over 51 experts 0.761 [0.744, 0.790] "
            "(chance 0.500; own − chance +0.261 [+0.244, +0.290] (interval above 0)); more.",
            "**Causal checks of the labels**: untouched.",
        ],
        "sections": {
            "explain": {
                "metrics": {
                    "all layers: mean F1 | position in interval": 0.33,
                    "all layers: mean balanced accuracy [95% CI]": "0.761 [0.744, 0.790]",
                    "all layers: mean recall [95% CI]": "0.658 [0.632, 0.705]",
                }
            }
        },
    }
    text = explain_markdown(results, "r.json", {"studies": {"label_mean_interval_coverage": study}})
    assert (
        "0.761 [0.744, 0.790] (nominal 95%; on the planted cases of this run's shape the BCa interval covered the "
        'true mean in cell "run shaped" 172 of 200 seeds (0.860, binomial se 0.025), below the nominal 0.95 by '
        'more than two binomial standard errors (±0.031); in cell "run shaped, recall lower in large documents" '
        "180 of 200 seeds (0.900, binomial se 0.021), below the nominal 0.95 by more than two binomial standard "
        "errors (±0.031); chance 0.500; own − chance +0.261" in text
    )
    assert (
        "F1: percentile 0.585 (se 0.035; misses 83 with the truth above, 0 below; the estimate at a median 0.45)"
        in text
    )
    assert "the mean estimate − truth -0.020 (the bootstrap's bias estimate -0.0050)" in text
    assert "this run's BCa estimate at 0.33" in text
    # 2 × 0.761 − 0.658 = 0.864: the run's specificity from its balanced accuracy and recall
    assert "this run's mean recall 0.66 and mean specificity 0.86" in text
    assert "set by hand from the run" in text
    assert (
        "F1: what covers more often than BCa by over two standard errors differs between the cells: "
        'cell "run shaped" basic, cell "run shaped, recall lower in large documents" none' in text
    )
    # basic 174 vs BCa 172 and percentile 190 vs BCa 180: within two se of their difference in both cells
    assert (
        "balanced accuracy: no method covers more often than BCa by over two standard errors in any" in text
    )
    assert "- **Causal checks of the labels**: untouched." in text
    assert explain_markdown(results, "r.json", {"studies": {}}).count("nominal 95%") == 0


def test_an_unavailable_interval_is_counted_apart_not_as_a_miss(studies):
    """A seed whose interval has NaN bounds (a resample's statistic undefined) is left out of the rate
    and counted as ``no interval``; it is neither a miss above nor below the truth."""
    rows = [
        studies._hit_and_side(-0.1, 0.2, 0.0),  # covers
        studies._hit_and_side(0.1, 0.3, 0.0),  # truth below the interval
        studies._hit_and_side(-0.4, -0.2, 0.0),  # truth above the interval
        studies._hit_and_side(math.nan, math.nan, 0.0),  # unavailable
    ]
    found, misses = studies._tally(rows, 4)
    assert (found["hits"], found["n"]) == (1, 3) and found["rate"] == pytest.approx(1 / 3)
    assert misses == {"above": 1, "below": 1, "no interval": 1}
    covered = np.array([[1.0, math.nan], [0.0, 1.0]])
    pooled = studies.seed_clustered_rate(covered, 0.95)
    assert (pooled["hits"], pooled["n"], pooled["no interval"]) == (2, 3, 1)
    assert pooled["rate"] == pytest.approx((1.0 + 0.5) / 2)  # each seed's share of its available ones


def test_the_miss_wording_names_the_seeds_without_an_interval():
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from readme_results import _miss_direction

    study = {
        "rates": {"k": _rate(121, 132, 0.95)},
        "misses, truth above / below the interval": {"k": {"above": 11, "below": 0, "no interval": 68}},
    }
    text = _miss_direction(study, "k")
    assert "11 of its 11 misses with the truth above the interval, 0 below" in text
    assert "68 seeds without an interval" in text and "overstates" not in text

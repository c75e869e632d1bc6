"""The planted studies that docs/METHODS.md and docs/EXPLAIN.md quote: coverage and rejection rates of
the library's intervals and tests on planted cases whose right answer is known.

Each study plants data where the truth is known (a null effect, or a known true value), runs the
library function the docs describe over many seeds, and records how often the interval covers the
truth (or how often the test rejects a true null), with the seeds, the replicates (bootstrap
resamples or permutations), the nominal level and the binomial standard error of each rate. The tests
of the same functions assert ranges on fewer seeds; the docs quote this script's measurements through
the generated blocks of ``tools/readme_results.py`` (``--write docs/METHODS.md``, ``--write
docs/EXPLAIN.md``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/planted_studies.py [--scale 1.0] [--out
docs/results/planted_studies.json]`` (a few minutes on one thread; ``--scale`` multiplies every
study's seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from tl_moe.analysis.driver_domain import DomainRouting, ReportDocuments, compare_drivers_with_domain_experts
from tl_moe.analysis.edit_windows import ratio_intervals
from tl_moe.analysis.effect_estimate import paired_rho_difference
from tl_moe.analysis.held_out_probing import (
    FN,
    FP,
    ROUTED_COUNT_DRAWS,
    TN,
    TP,
    HeldOutArm,
    Side,
    _difference_statistic,
    balanced_f1,
    compare,
)
from tl_moe.analysis.reweighting import draw_mean_intervals, holm_adjusted
from tl_moe.analysis.stats import cluster_bootstrap
from tl_moe.explain.document_bootstrap import document_intervals, share_beating
from tl_moe.explain.scorers import Score, detection_metrics
from tl_moe.pipeline.machine import load_average, machine

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "planted_studies.json"
#: Nominal level of every interval, and of every test (rejection at 5%).
CONFIDENCE, ALPHA = 0.95, 0.05


# --------------------------------------------------------------------------------------------------
# a rate with its binomial error
# --------------------------------------------------------------------------------------------------
def rate(hits: int, n: int, nominal: float) -> dict[str, Any]:
    """``hits`` of ``n`` as a rate with its binomial standard error, and the standard error a rate
    would have at the ``nominal`` level over the same ``n`` (the yardstick of "at the nominal rate")."""
    r = hits / n
    return {
        "rate": r,
        "hits": int(hits),
        "n": int(n),
        "se": math.sqrt(r * (1 - r) / n),
        "nominal": nominal,
        "nominal_se": math.sqrt(nominal * (1 - nominal) / n),
    }


@dataclass(frozen=True)
class Study:
    """A planted study: its name, what it plants and measures, the test that asserts its range, its
    default seeds and replicates, and the function that runs it (``run(seeds, replicates)`` ->
    ``{"rates": {label: rate(...)}, "settings": {...}}``)."""

    name: str
    title: str
    test: str
    seeds: int
    replicates: int
    run: Callable[[int, int], dict[str, Any]]


# --------------------------------------------------------------------------------------------------
# explain: the label scores' document intervals (share beating shuffled, mean AUC)
# --------------------------------------------------------------------------------------------------
def label_scores(
    seed: int, *, documents: int = 40, experts: int = 40, items: int = 20, gain: float = 0.0
) -> tuple[dict, dict]:
    """Own and shuffled-label scores of ``experts`` experts, ``items`` positives and negatives each,
    drawn from ``documents`` documents with a shared per-document effect (sd 0.8). A label's graded
    answer is ``gain · truth + document effect + noise``, yes above ``gain / 2``; own and shuffled have
    the same ``gain``, so they are exchangeable (the null of the share), and at ``gain = 0`` the AUC is
    0.5."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 0.8, documents)
    truth = (np.arange(2 * items) < items).astype(int)
    own, shuffled = {}, {}
    for e in range(experts):
        docs = rng.integers(0, documents, 2 * items)
        for arm in (own, shuffled):
            graded = gain * truth + effect[docs] + rng.normal(0, 1, len(docs))
            predicted = (graded > gain / 2).astype(int)
            arm[(0, e)] = Score(
                0, e, "concept", "label", (0, e), detection_metrics(truth, predicted, graded),
                truth=tuple(truth), predicted=tuple(predicted), documents=tuple(docs.tolist()),
                graded=tuple(graded.tolist()),
            )  # fmt: skip
    return own, shuffled


def explain_share_null(seeds: int, replicates: int) -> dict[str, Any]:
    """``share_beating``'s percentile interval covering the expected share 1/2 when each expert's own
    and shuffled labels are exchangeable (40 experts, 40 documents)."""
    keys = [(0, e) for e in range(40)]
    covered = 0
    for seed in range(seeds):
        own, shuffled = label_scores(seed, gain=0.5)
        row = share_beating(keys, own, shuffled, n_resamples=replicates, seed=seed)
        covered += bool(row["share ci low"] <= 0.5 <= row["share ci high"])
    return {
        "rates": {"covers 1/2": rate(covered, seeds, CONFIDENCE)},
        "settings": {"experts": 40, "documents": 40, "items per class": 20, "document effect sd": 0.8},
    }


def explain_auc_null(seeds: int, replicates: int) -> dict[str, Any]:
    """``document_intervals``' BCa interval of the mean AUC covering a planted AUC of 0.5 (labels that
    carry no information; 40 experts, 40 documents)."""
    keys = [(0, e) for e in range(40)]
    covered = 0
    for seed in range(seeds):
        own, shuffled = label_scores(seed)
        row = document_intervals(keys, own, {"shuffled": shuffled}, "auc", n_resamples=replicates, seed=seed)
        covered += bool(row["ci low"] <= 0.5 <= row["ci high"])
    return {
        "rates": {"covers 0.5": rate(covered, seeds, CONFIDENCE)},
        "settings": {"experts": 40, "documents": 40, "items per class": 20, "document effect sd": 0.8},
    }


# --------------------------------------------------------------------------------------------------
# held-out probing: a control with random draws (compare's draw-mean t test vs the swap test)
# --------------------------------------------------------------------------------------------------
HELD_OUT_DOCUMENTS, HELD_OUT_CONCEPTS = 40, ("noun", "verb", "digit")


def confusion_counts(
    rng: np.random.Generator, hits: np.ndarray, false_alarm: float = 0.1
) -> Float[np.ndarray, "1 concept doc 4"]:
    """``[1, concept, doc, 4]`` confusion counts of one arm: Poisson(20) positives and Poisson(60)
    negatives per document, concept c's probe flagging a positive with ``hits[c]``."""
    counts = np.zeros((1, len(hits), HELD_OUT_DOCUMENTS, 4))
    for c, hit in enumerate(hits):
        positives, negatives = rng.poisson(20.0, HELD_OUT_DOCUMENTS), rng.poisson(60, HELD_OUT_DOCUMENTS)
        tp, fp = rng.binomial(positives, hit), rng.binomial(negatives, false_alarm)
        counts[0, c, :, TP], counts[0, c, :, FN] = tp, positives - tp
        counts[0, c, :, FP], counts[0, c, :, TN] = fp, negatives - fp
    return counts


def held_out_arm(name: str, counts: np.ndarray) -> HeldOutArm:
    """An arm of ``compare`` holding only its test documents' confusion counts at k = 1."""
    return HeldOutArm(
        name, pd.DataFrame(), pd.DataFrame(), counts, HELD_OUT_CONCEPTS, (1,), np.arange(HELD_OUT_DOCUMENTS)
    )


def random_draw_null(seed: int, n_draws: int, replicates: int) -> tuple[float, float]:
    """One planted null "the expert scores as random dense neurons do": each control draw's probes hit
    at the expert's rates plus a draw-to-draw offset (sd 0.05 per concept), so the true difference from
    the draws' population is 0. Returns ``compare``'s (swap p, draw-mean t test p) in balanced
    accuracy."""
    rng = np.random.default_rng(seed)
    hits = np.array([0.8, 0.6, 0.7])
    first = held_out_arm("moe", confusion_counts(rng, hits))
    draws = [
        held_out_arm(f"control[{j}]", confusion_counts(rng, np.clip(hits + rng.normal(0, 0.05, 3), 0, 1)))
        for j in range(n_draws)
    ]
    records = compare(first, draws, n_resamples=replicates, permutations=replicates, seed=seed)
    (record,) = [r for r in records if r["metric"] == "balanced_accuracy"]
    return record["swap_p"], record["bootstrap_p"]


def held_out_control_draws(seeds: int, replicates: int) -> dict[str, Any]:
    """Rejections at 5% of the planted random-draw null by ``compare``'s swap test (draws held fixed)
    and its draw-mean t test p-value (document and draw variance, Satterthwaite df), with the default
    ``ROUTED_COUNT_DRAWS`` draws and with 20."""
    rates = {}
    for n_draws in sorted({ROUTED_COUNT_DRAWS, 20}):
        p = np.array([random_draw_null(seed, n_draws, replicates) for seed in range(seeds)]) <= ALPHA
        rates[f"swap test, {n_draws} draws"] = rate(p[:, 0].sum(), seeds, ALPHA)
        rates[f"draw-mean t test, {n_draws} draws"] = rate(p[:, 1].sum(), seeds, ALPHA)
    return {
        "rates": rates,
        "settings": {
            "documents": HELD_OUT_DOCUMENTS,
            "concepts": 3,
            "draw sd": 0.05,
            "metric": "balanced accuracy",
            "default draws": ROUTED_COUNT_DRAWS,
        },
    }


# --------------------------------------------------------------------------------------------------
# re-weighting: the control's draws in the draw-mean t interval and in Holm over domains
# --------------------------------------------------------------------------------------------------
#: (draw sd in nats/token, number of draws) of the re-weighting control studies.
REWEIGHTING_CELLS = ((0.2, 5), (0.05, 5), (0.0, 5), (0.2, 20), (0.05, 20), (0.0, 20))


def reweighting_case(
    seed: int, draw_sd: float, n_draws: int, n_docs: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-document sums of the chosen edit's loss change (true effect 0 per token) and of ``n_draws``
    random sets, each with its own effect drawn around 0 with sd ``draw_sd`` nats/token; the documents'
    token counts."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(20, 60, n_docs).astype(float)
    chosen = rng.normal(0, 0.3, n_docs) * np.sqrt(counts)
    own = rng.normal(0, draw_sd, n_draws)
    draws = own[:, None] * counts + rng.normal(0, 0.3, (n_draws, n_docs)) * np.sqrt(counts)
    return chosen, draws, counts


def draw_mean_covers(
    chosen: np.ndarray, draws: np.ndarray, counts: np.ndarray, seed: int, replicates: int
) -> bool:
    """Whether ``draw_mean_intervals``' chosen − control interval (the draw-mean t) covers the true 0."""
    ((interval, _),) = draw_mean_intervals((chosen - draws)[None], counts, n_resamples=replicates, seed=seed)
    return interval.covers(0.0)


def reweighting_control_draws(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of the true chosen − control = 0 by the draw-mean t interval at draw sds 0.2, 0.05 and 0
    with 5 and 20 draws, and by a documents-only interval (the draws held fixed, ``ratio_intervals``)
    with 5 draws."""
    rates = {}
    for sd, n_draws in REWEIGHTING_CELLS:
        draw_mean = documents_only = 0
        for seed in range(seeds):
            chosen, draws, counts = reweighting_case(seed, sd, n_draws)
            draw_mean += draw_mean_covers(chosen, draws, counts, seed, replicates)
            if n_draws == 5:
                (fixed,) = ratio_intervals(chosen - draws.mean(0), counts, n_resamples=replicates, seed=seed)
                documents_only += fixed.covers(0.0)
        rates[f"draw-mean t, {n_draws} draws, draw sd {sd:g}"] = rate(draw_mean, seeds, CONFIDENCE)
        if n_draws == 5:
            rates[f"documents only, {n_draws} draws, draw sd {sd:g}"] = rate(
                documents_only, seeds, CONFIDENCE
            )
    return {"rates": rates, "settings": {"documents": 40, "document noise sd": 0.3}}


def reweighting_holm(seeds: int, replicates: int) -> dict[str, Any]:
    """``holm_adjusted``'s family-wise rate over 4 domains with no true gain (draw-mean t tests): any
    domain rejected at family-wise 5%, with 5 or 20 control draws at draw sds 0.2, 0.05 and 0."""
    rates = {}
    for sd, n_draws in REWEIGHTING_CELLS:
        rejected = 0
        for seed in range(seeds):
            rng = np.random.default_rng([seed, n_draws, int(sd * 1000)])
            family = {}
            for d in range(4):
                chosen, draws, counts = reweighting_case(int(rng.integers(1 << 30)), sd, n_draws)
                family[f"d{d}"] = (chosen - draws, counts)
            rejected += bool(holm_adjusted(family, n_resamples=replicates, seed=seed)["rejected"].any())
        rates[f"{n_draws} draws, draw sd {sd:g}"] = rate(rejected, seeds, ALPHA)
    return {"rates": rates, "settings": {"domains": 4, "documents per domain": 40}}


# --------------------------------------------------------------------------------------------------
# drivers vs domain experts: the document interval of Spearman's rho
# --------------------------------------------------------------------------------------------------
EFFECT = "remove: effect (report)"


def driver_domain_case(
    seed: int, n_docs: int = 90, n_layers: int = 2, n_experts: int = 16, n_domains: int = 3
) -> tuple[pd.DataFrame, pd.DataFrame, ReportDocuments, DomainRouting]:
    """Drivers and domains frames, report documents and selection-half routing where each expert routes
    each domain's documents at its own rate (a Dirichlet profile) and its removal effect is unrelated to
    its domain score (expected effect 0 for every expert): rho's truth is 0. Documents alternate between
    the selection half (even) and the report half (odd)."""
    rng = np.random.default_rng(seed)
    layers = np.repeat(np.arange(1, n_layers + 1), n_experts)
    experts = np.tile(np.arange(n_experts), n_layers)
    domain = np.arange(n_docs) % n_domains
    tokens = rng.integers(20, 60, n_docs).astype(float)
    profile = rng.dirichlet(np.full(n_domains, 0.7), (n_layers, n_experts))  # [layer, expert, domain]
    routed = rng.poisson(0.3 * tokens * n_domains * profile[..., domain]).astype(float)
    selection, report = np.arange(0, n_docs, 2), np.arange(1, n_docs, 2)
    counts = tokens[report]
    sums = rng.normal(0, 1.0, (n_layers, n_experts, len(report))) * np.sqrt(counts)
    drivers = pd.DataFrame(
        {
            "layer": layers,
            "expert": experts,
            "driver": False,
            EFFECT: (sums.sum(-1) / counts.sum()).reshape(-1),
        }
    )
    domains = pd.DataFrame(
        {
            "layer": layers,
            "expert": experts,
            "score": rng.uniform(size=layers.size),
            "favoured_domain": "python",
            "domain_expert": False,
            "insufficient_tokens": False,
        }
    )
    layer_ids = tuple(range(1, n_layers + 1))
    routing = DomainRouting(
        layer_ids, routed[..., selection], domain[selection], n_domains, (routed[..., report] > 0).sum(-1)
    )
    return drivers, domains, ReportDocuments(layer_ids, sums, counts), routing


def driver_domain_null(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of rho = 0 by ``compare_drivers_with_domain_experts``' document interval of Spearman's
    rho (domain score on the selection half vs removal effect on the report half, both resampled), per
    layer and over all layers."""
    covered: dict[str, int] = {}
    for seed in range(seeds):
        drivers, domains, documents, routing = driver_domain_case(seed)
        table = compare_drivers_with_domain_experts(
            drivers, domains, documents=documents, routing=routing, n_resamples=replicates, seed=seed
        ).table
        for layer, low, high in zip(
            table["layer"], table["spearman ci low"], table["spearman ci high"], strict=True
        ):
            label = "over all layers" if layer == "all" else f"layer {layer}"
            covered[label] = covered.get(label, 0) + bool(low <= 0 <= high)
    rates = {"every interval": rate(sum(covered.values()), seeds * len(covered), CONFIDENCE)}
    rates.update({label: rate(hits, seeds, CONFIDENCE) for label, hits in covered.items()})
    return {
        "rates": rates,
        "settings": {"documents": 90, "domains": 3, "layers": 2, "experts per layer": 16},
    }


# --------------------------------------------------------------------------------------------------
# drivers: Holm over domains with no true gain; the mean within-layer rho of a between-layer ranking
# --------------------------------------------------------------------------------------------------
def driver_holm_null(seeds: int, replicates: int) -> dict[str, Any]:
    """``holm_adjusted`` over 5 domains × 40 documents with no true gain: how often some domain is
    called improved (rejected with a negative difference) and how often some domain is rejected either
    way, at family-wise 5%."""
    rng = np.random.default_rng(0)
    improved = rejected = 0
    for seed in range(seeds):
        family = {}
        for d in range(5):
            counts = rng.integers(20, 60, 40).astype(float)
            family[f"d{d}"] = (rng.normal(0.0, 0.3, 40) * np.sqrt(counts), counts)  # true ratio 0
        frame = holm_adjusted(family, n_resamples=replicates, seed=seed)
        improved += bool((frame["rejected"] & (frame["estimate"] < 0)).any())
        rejected += bool(frame["rejected"].any())
    return {
        "rates": {
            "some domain improved": rate(improved, seeds, ALPHA / 2),  # one side of a two-sided test
            "some domain rejected": rate(rejected, seeds, ALPHA),
        },
        "settings": {"domains": 5, "documents per domain": 40},
    }


def layered_case(seed: int, n_layers: int = 4, per_layer: int = 16, n_docs: int = 80) -> tuple:
    """Exact effects of 4 layers × 16 experts (a layer level 0, 2, 4, 6 plus a within-layer spread) and
    a first-order estimate that sees the layer level only: inside a layer its order is document noise,
    so the mean within-layer rho's truth is 0. Returns ``paired_rho_difference``'s arguments and the
    layers."""
    rng = np.random.default_rng(seed)
    layer = np.repeat(np.arange(n_layers), per_layer)
    truth = 2.0 * layer + rng.normal(0, 1, layer.size)
    counts = rng.integers(10, 30, n_docs).astype(float)
    exact = truth[:, None] * counts + rng.normal(0, 1, (layer.size, n_docs)) * np.sqrt(counts)
    estimate = (2.0 * layer)[:, None] * counts + rng.normal(0, 1, (layer.size, n_docs)) * np.sqrt(counts)
    routed = rng.integers(5, 15, (layer.size, n_docs)).astype(float)
    reap = (truth + rng.normal(0, 0.3, layer.size))[:, None] * routed
    return (exact, counts, estimate, counts, reap, routed), layer


def within_layer_rho_null(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of 0 by ``paired_rho_difference``'s interval of the mean within-layer rho of the
    estimate, when the estimate ranks layers and nothing inside them (and how often the pooled rho's
    interval is above 0.5 there)."""
    covered = pooled = 0
    for seed in range(seeds):
        scores, layer = layered_case(seed)
        table = paired_rho_difference(*scores, layers=layer, n_resamples=replicates, seed=seed)
        first = table[table["score"] == "first-order estimate"].set_index("layer")
        within = first.loc["within layers (mean)"]
        covered += bool(within["ci low"] <= 0 <= within["ci high"])
        pooled += bool(first.loc["all", "ci low"] > 0.5)
    return {
        "rates": {
            "within layers (mean) covers 0": rate(covered, seeds, CONFIDENCE),
            "pooled interval above 0.5": rate(pooled, seeds, CONFIDENCE),
        },
        "settings": {"layers": 4, "experts per layer": 16, "documents": 80},
    }


# --------------------------------------------------------------------------------------------------
# held-out probing: which paired interval method (percentile, BCa, basic) covers best
# --------------------------------------------------------------------------------------------------
#: Per concept: (hit rate of arm a, of arm b, false-alarm rate of both, rare).
METHOD_CONCEPTS = (
    (0.9, 0.8, 0.1, False),
    (0.7, 0.75, 0.15, False),
    (0.85, 0.85, 0.1, False),
    (0.6, 0.9, 0.2, True),
    (0.95, 0.5, 0.1, True),
    (0.8, 0.6, 0.3, True),
)
METHOD_DOCUMENTS, METHOD_TRUTH_DOCUMENTS = 40, 200_000


def rare_concept_counts(seed: int, n_docs: int = METHOD_DOCUMENTS) -> tuple[np.ndarray, np.ndarray]:
    """``[concept, doc, 4]`` confusion counts of two arms: three common concepts (Poisson(15)
    positives per document) and three rare ones (positives in about one document in ten, Pareto-sized),
    with a per-document difficulty shared by the arms."""
    rng = np.random.default_rng(seed)
    counts_a = np.zeros((len(METHOD_CONCEPTS), n_docs, 4))
    counts_b = np.zeros_like(counts_a)
    for c, (hit_a, hit_b, false_alarm, rare) in enumerate(METHOD_CONCEPTS):
        if rare:
            mean = np.where(rng.random(n_docs) < 0.1, rng.pareto(1.5, n_docs) * 20 + 1, 0.0)
        else:
            mean = np.full(n_docs, 15.0)
        positives, negatives = rng.poisson(mean), rng.poisson(50, n_docs)
        difficulty = rng.normal(0, 1.5 if rare else 0.5, n_docs)
        for counts, hit in ((counts_a, hit_a), (counts_b, hit_b)):
            hit_d = 1 / (1 + np.exp(-(np.log(hit / (1 - hit)) + difficulty)))
            tp, fp = rng.binomial(positives, hit_d), rng.binomial(negatives, false_alarm)
            counts[c, :, TP], counts[c, :, FN] = tp, positives - tp
            counts[c, :, FP], counts[c, :, TN] = fp, negatives - fp
    return counts_a, counts_b


def paired_f1_difference(counts_a: np.ndarray, counts_b: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The held-out comparison's paired statistic (mean class-balanced F1 of a − b) of document weights."""
    paired = _difference_statistic([Side(counts_a, (counts_b,))], balanced_f1)
    return lambda w: paired(w)[0]


def interval_method_coverage(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of the true paired difference (from 200,000 documents) by the percentile, BCa and basic
    document-bootstrap intervals, and the median relative position of the estimate in its interval."""
    big_a, big_b = rare_concept_counts(10_000, n_docs=METHOD_TRUTH_DOCUMENTS)
    truth = float(paired_f1_difference(big_a, big_b)(np.ones((1, METHOD_TRUTH_DOCUMENTS)))[0])
    rates, positions = {}, {}
    for method in ("percentile", "BCa", "basic"):
        covered, position = 0, []
        for seed in range(seeds):
            statistic = paired_f1_difference(*rare_concept_counts(seed))
            interval = cluster_bootstrap(
                statistic, METHOD_DOCUMENTS, n_resamples=replicates, method=method, seed=seed
            )
            covered += interval.covers(truth)
            position.append((interval.estimate - interval.low) / (interval.high - interval.low))
        rates[method] = rate(covered, seeds, CONFIDENCE)
        positions[method] = float(np.median(position))
    return {
        "rates": rates,
        "median position of the estimate": positions,
        "truth": truth,
        "settings": {"documents": METHOD_DOCUMENTS, "concepts": 6, "rare concepts": 3},
    }


STUDIES = (
    Study(
        "explain_share_null",
        "share of experts beating their shuffled control: percentile interval on exchangeable labels",
        "tests/test_explain_document_units.py",
        100,
        500,
        explain_share_null,
    ),
    Study(
        "explain_auc_null",
        "mean AUC: BCa document interval on a planted AUC of 0.5",
        "tests/test_explain_document_units.py",
        100,
        500,
        explain_auc_null,
    ),
    Study(
        "held_out_control_draws",
        "held-out comparison with random control draws: swap test vs draw-mean t test on a planted null",
        "tests/test_held_out_gate_and_tests.py",
        1000,
        199,
        held_out_control_draws,
    ),
    Study(
        "reweighting_control_draws",
        "re-weighting chosen − control: draw-mean t vs documents-only interval on a planted null",
        "tests/test_control_draws.py",
        1000,
        400,
        reweighting_control_draws,
    ),
    Study(
        "reweighting_holm",
        "re-weighting Holm over 4 domains with no true gain (draw-mean t tests): family-wise rate",
        "tests/test_control_draws.py",
        1000,
        400,
        reweighting_holm,
    ),
    Study(
        "driver_domain_null",
        "Spearman rho of domain score vs removal effect: document interval on an unrelated effect",
        "tests/test_driver_domain.py",
        200,
        200,
        driver_domain_null,
    ),
    Study(
        "driver_holm_null",
        "drivers' re-weighting Holm over 5 domains with no true gain: family-wise rates",
        "tests/test_driver_statistics.py",
        400,
        400,
        driver_holm_null,
    ),
    Study(
        "within_layer_rho_null",
        "first-order estimate that ranks layers only: the mean within-layer rho's interval",
        "tests/test_driver_statistics.py",
        100,
        200,
        within_layer_rho_null,
    ),
    Study(
        "interval_method_coverage",
        "paired held-out difference with rare concepts: percentile, BCa and basic coverage",
        "tests/test_interval_method_coverage.py",
        300,
        999,
        interval_method_coverage,
    ),
)


def command(argv: list[str] | None = None) -> str:
    """The command line that ran the studies, as ``python benchmarks/planted_studies.py ARGS``."""
    return shlex.join(["python", "benchmarks/planted_studies.py", *(sys.argv[1:] if argv is None else argv)])


def run_study(study: Study, seeds: int | None = None, replicates: int | None = None) -> dict[str, Any]:
    """One study's record: its title, test, seeds (0 .. seeds − 1), replicates, rates and settings."""
    seeds, replicates = seeds or study.seeds, replicates or study.replicates
    start = time.perf_counter()
    measured = study.run(seeds, replicates)
    return {
        "title": study.title,
        "test": study.test,
        "seeds": seeds,
        "replicates": replicates,
        **measured,
        "seconds": round(time.perf_counter() - start, 1),
    }


def run_all(
    scale: float = 1.0, names: tuple[str, ...] | None = None, argv: list[str] | None = None
) -> dict[str, Any]:
    """Every study (or those ``names``), each at ``scale`` × its default seeds; ``argv`` is the command
    line recorded (this process's by default)."""
    load_at_start = load_average()
    studies = {}
    for study in STUDIES:
        if names and study.name not in names:
            continue
        studies[study.name] = run_study(study, max(1, round(study.seeds * scale)))
        print(f"{study.name}: {studies[study.name]['seconds']} s", flush=True)
    return {
        "metadata": {"command": command(argv), "machine": machine(torch.get_num_threads(), load_at_start)},
        "studies": studies,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every study's seeds")
    parser.add_argument("--only", nargs="*", default=None, help="run only these studies")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    results = run_all(args.scale, tuple(args.only) if args.only else None, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

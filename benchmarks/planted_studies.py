"""The planted studies that docs/METHODS.md and docs/EXPLAIN.md quote: coverage and rejection rates of
the library's intervals and tests on planted cases whose right answer is known.

Each study plants data where the truth is known (a null effect, or a known true value), runs the
library function the docs describe over many seeds, and records how often the interval covers the
truth (or how often the test rejects a true null), with the seeds, the replicates (bootstrap
resamples or permutations), the nominal level and the binomial standard error of each rate. The tests
of the same functions assert ranges on fewer seeds; the docs quote this script's measurements through
the generated blocks of ``tools/readme_results.py`` (``--write docs/METHODS.md``, ``--write
docs/EXPLAIN.md``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/planted_studies.py [--scale 1.0] [--only NAME ...] [--out
docs/results/planted_studies.json]`` (about 30 minutes on one loaded core, near half of it the excess study's run-shaped regime; ``--scale``
multiplies every study's seeds). Every study's record holds its seeds (0 .. seeds − 1), its replicates
and the command that reruns it alone; the run's command and machine are in the metadata.
"""

from __future__ import annotations

import argparse
import functools
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
import scipy.spatial.distance
import scipy.special
import scipy.stats
import torch
from jaxtyping import Float, Int

from tl_moe.analysis.configs.specialization import SpecializationConfig
from tl_moe.analysis.driver_domain import (
    WITHIN_PARTIAL,
    DomainRouting,
    ReportDocuments,
    compare_drivers_with_domain_experts,
)
from tl_moe.analysis.driver_frequency import saliency_frequency_spearman
from tl_moe.analysis.drivers import HALVES_KEY, saliency_effect_spearman
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
    balanced_accuracy,
    balanced_f1,
    compare,
    concept_gate,
)
from tl_moe.analysis.reweighting import draw_mean_intervals, holm_adjusted
from tl_moe.analysis.specialization_permutation import (
    BOOTSTRAP_PERMUTATIONS,
    document_permutation_baseline,
    excess_intervals,
    excess_statistic,
)
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import (
    MIN_DOCUMENTS,
    PAIRED_METHOD,
    RHO_METHOD,
    RHO_MIN_EXPERT_DOCUMENTS,
    cluster_bootstrap,
)
from tl_moe.explain.document_bootstrap import MEAN_METHOD, document_intervals, share_beating
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
    would have at the ``nominal`` level over the same ``n`` (the yardstick of "at the nominal rate");
    NaN rates when ``n`` is 0 (no interval to count)."""
    r = hits / n if n else math.nan
    return {
        "rate": r,
        "hits": int(hits),
        "n": int(n),
        "se": math.sqrt(r * (1 - r) / n) if n else math.nan,
        "nominal": nominal,
        "nominal_se": math.sqrt(nominal * (1 - nominal) / n) if n else math.nan,
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


#: Simulated (own, shuffled) pairs behind the share's truth, and the seed of that simulation.
SHARE_TRUTH_PAIRS, SHARE_TRUTH_SEED = 1_000_000, 10**6


@functools.cache
def share_truth(
    pairs: int = SHARE_TRUTH_PAIRS, *, documents: int = 40, items: int = 20, gain: float = 0.5
) -> dict[str, float]:
    """The expected share of experts whose own balanced accuracy beats the shuffled one's, on
    :func:`label_scores`' planted null (own and shuffled exchangeable): ``(1 − P(tie)) / 2``, a tie
    not beating. With ``items`` positives and negatives the balanced accuracy is ``(TP + TN) / (2 ·
    items)``, on a grid of ``1 / (2 · items)``, so a tie has a probability well above 0; it is estimated
    from ``pairs`` (own, shuffled) pairs drawn as :func:`label_scores` draws them (a fresh set of
    document effects per pair), the share with its binomial se."""
    rng = np.random.default_rng(SHARE_TRUTH_SEED)
    truth = (np.arange(2 * items) < items)[None]
    beats = ties = 0
    for start in range(0, pairs, 200_000):
        n = min(200_000, pairs - start)
        effect = rng.normal(0, 0.8, (n, documents))
        shared = np.take_along_axis(effect, rng.integers(0, documents, (n, 2 * items)), 1) + gain * truth
        correct = [((shared + rng.normal(0, 1, shared.shape) > gain / 2) == truth).sum(1) for _ in range(2)]
        beats += int((correct[0] > correct[1]).sum())
        ties += int((correct[0] == correct[1]).sum())
    share = beats / pairs
    return {
        "expected share": share,
        "se": math.sqrt(share * (1 - share) / pairs),
        "P(tie)": ties / pairs,
        "pairs": pairs,
        "seed": SHARE_TRUTH_SEED,
    }


def explain_share_null(seeds: int, replicates: int) -> dict[str, Any]:
    """``share_beating``'s percentile interval covering the expected share (:func:`share_truth`: below
    1/2 by half the chance of a tie) when each expert's own and shuffled labels are exchangeable (40
    experts, 40 documents)."""
    truth = share_truth()
    expected = truth["expected share"]
    keys = [(0, e) for e in range(40)]
    covered = 0
    for seed in range(seeds):
        own, shuffled = label_scores(seed, gain=0.5)
        row = share_beating(keys, own, shuffled, n_resamples=replicates, seed=seed)
        covered += bool(row["share ci low"] <= expected <= row["share ci high"])
    return {
        "rates": {"covers the expected share": rate(covered, seeds, CONFIDENCE)},
        "truth": truth,
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
# explain: the mean label scores' document intervals on planted scores with a known true mean
# --------------------------------------------------------------------------------------------------
LABEL_DOMAINS, LABEL_DOCUMENTS, LABEL_EXPERTS, LABEL_NEGATIVES = 7, 58, 50, 20
#: The share of an expert's positives from its home-domain documents.
LABEL_HOME_SHARE = 0.85
LABEL_STATISTICS = ("balanced_accuracy", "f1", "recall")
#: The planted cells. ``size sd``: sd of a document's log size (every item, positive or negative, is
#: drawn in proportion to its document's size; 0: documents equally large); ``recall shift``: added to
#: every expert's logit of a right answer on a positive; ``routing sd`` (γ): how strongly an expert's
#: positives gather in the documents where it is routed more; ``slope scale``: how much more often the
#: label is right there; ``size slope``: how much less often it is right on a positive in a larger
#: document. "earlier model" is the model the coverage was first measured on; "run shaped" skews the
#: documents' sizes and lowers recall until the items per document, the mean recall and specificity, the
#: percentile interval's lean and the bootstrap bias come near the toy explain run's
#: (:data:`LABEL_RUN_SHAPE`); "run shaped, recall lower in large documents" adds the run's other trait
#: (its largest score documents hold its lowest recall).
LABEL_CELLS = {
    "earlier model": {"size sd": 0.0, "recall shift": 0.0, "routing sd": 0.8, "slope scale": 1.0, "size slope": 0.0},
    "run shaped": {"size sd": 1.2, "recall shift": -1.0, "routing sd": 0.8, "slope scale": 1.0, "size slope": 0.0},
    "run shaped, recall lower in large documents": {
        "size sd": 1.2, "recall shift": -0.6, "routing sd": 0.8, "slope scale": 1.0, "size slope": 0.6,
    },
}  # fmt: skip
#: The toy explain run's score items (its 51 labelled experts' concept scores, docs/results/toy_explain.json's
#: run), measured once: what the "run shaped" cell aims at. The run's own estimate position and bootstrap
#: bias are in its results file.
LABEL_RUN_SHAPE = {
    "score documents": 58,
    "items per document, max": 190,
    "items per document, median": 17,
    "share of items in the 6 largest documents": 0.44,
    "mean recall": 0.66,
    "mean specificity": 0.86,
    "position of the estimate, percentile / basic / BCa, balanced accuracy": [0.66, 0.34, 0.37],
    "position of the estimate, percentile / basic / BCa, F1": [0.77, 0.23, 0.33],
    "position of the estimate, percentile / basic / BCa, recall": [0.68, 0.32, 0.36],
    "bootstrap bias, balanced accuracy / F1 / recall": [-0.0065, -0.0183, -0.0120],
}


def label_experts(cell: dict[str, float]) -> dict[str, Any]:
    """The planted experts of a cell (fixed seed): home domain, positives (20; 6 for the first 6 experts),
    the logits of a right answer on a positive (moved by the cell's ``recall shift``) and of a yes on a
    negative away from home, their home bonuses, the slope of both in the document's routing intensity
    ``u`` (times the cell's ``slope scale``), and the cell's ``routing sd`` (γ)."""
    rng = np.random.default_rng(12345)
    recall_shift, scale = cell["recall shift"], cell["slope scale"]
    return {
        "gamma": cell["routing sd"],
        "size sd": cell["size sd"],
        "size slope": cell["size slope"],
        "home": rng.integers(0, LABEL_DOMAINS, LABEL_EXPERTS),
        "positives": np.where(np.arange(LABEL_EXPERTS) < 6, 6, 20),
        "recall": rng.normal(0.8, 1.0, LABEL_EXPERTS) + recall_shift,
        "recall_home": rng.uniform(0.5, 2.0, LABEL_EXPERTS),
        "false": rng.normal(-2.0, 0.8, LABEL_EXPERTS),
        "false_home": rng.uniform(0.0, 1.5, LABEL_EXPERTS),
        "slope": scale * rng.uniform(0.3, 1.2, LABEL_EXPERTS),
    }


def label_rates(
    x: dict[str, Any], domain: np.ndarray, u: np.ndarray, z: np.ndarray | float = 0.0
) -> tuple[np.ndarray, ...]:
    """Per expert (rows) and document (columns): positive intensity (before document size), P(yes |
    positive), P(yes | negative). An expert's positives come mostly from its home domain and from documents
    where it is routed more (``exp(γ u)``), and its label is right more often there; on a positive it is
    right less often in larger documents (``z``: the document's standardized log size, times the cell's
    ``size slope``)."""
    home = x["home"][:, None] == domain
    share = np.where(
        home, LABEL_HOME_SHARE * LABEL_DOMAINS, (1 - LABEL_HOME_SHARE) * LABEL_DOMAINS / (LABEL_DOMAINS - 1)
    )
    intensity = share * np.exp(x["gamma"] * u - x["gamma"] ** 2 / 2)
    hit = scipy.special.expit(
        x["recall"][:, None]
        + x["recall_home"][:, None] * home
        + x["slope"][:, None] * u
        - x["size slope"] * z
    )
    false = scipy.special.expit(
        x["false"][:, None] + x["false_home"][:, None] * home - x["slope"][:, None] * u
    )
    return intensity, hit, false


def label_true_counts(x: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """Each expert's expected true positives, false negatives, false positives, true negatives over the
    document population: every item drawn in proportion to its document's size (log-normal, sd ``size
    sd``), positives also to the routing intensity; Gauss–Hermite quadrature over ``u`` and the
    standardized log size ``z`` (size-weighted: ``z`` shifted by the size sd), domains equally likely."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()
    u, z = np.meshgrid(nodes, nodes + x["size sd"], indexing="ij")  # size-weighted z: N(size sd, 1)
    u, z, w = u.ravel(), z.ravel(), np.outer(weights, weights).ravel()
    hits = mass = false = 0.0
    for domain in range(LABEL_DOMAINS):
        intensity, hit, no = label_rates(x, domain, np.broadcast_to(u, (LABEL_EXPERTS, len(u))), z)
        hits, mass = hits + (intensity * hit) @ w, mass + intensity @ w
        false = false + no @ w / LABEL_DOMAINS
    recall = hits / mass
    p, n = x["positives"], LABEL_NEGATIVES
    return p * recall, p * (1 - recall), n * false, n * (1 - false)


def label_truth(x: dict[str, np.ndarray]) -> dict[str, float]:
    """The true mean over experts of each of :data:`LABEL_STATISTICS` (the limit of the estimate over ever
    more documents, each expert's class sizes fixed)."""
    tp, fn, fp, tn = label_true_counts(x)
    per_expert = {
        "balanced_accuracy": (tp / (tp + fn) + tn / (tn + fp)) / 2,
        "f1": 2 * tp / (2 * tp + fp + fn),
        "recall": tp / (tp + fn),
    }
    return {name: float(per_expert[name].mean()) for name in LABEL_STATISTICS}


def planted_label_scores(x: dict[str, Any], seed: int) -> dict[tuple[int, int], Score]:
    """One planted corpus: ``LABEL_DOCUMENTS`` documents (a domain, a routing intensity ``u`` and a
    log-normal size of sd ``size sd`` each); per expert its positives drawn in proportion to size ×
    intensity and :data:`LABEL_NEGATIVES` negatives in proportion to size, each item's verdict drawn
    from its document's rates."""
    rng = np.random.default_rng(seed)
    domain, u = rng.integers(0, LABEL_DOMAINS, LABEL_DOCUMENTS), rng.normal(0, 1, LABEL_DOCUMENTS)
    z = rng.normal(0, 1, LABEL_DOCUMENTS)
    size = np.exp(x["size sd"] * z)
    intensity, hit, false = label_rates(x, domain[None, :], u[None, :], z[None, :])
    scores = {}
    for e in range(LABEL_EXPERTS):
        positive = intensity[e] * size
        docs = np.concatenate(
            [
                rng.choice(LABEL_DOCUMENTS, x["positives"][e], p=positive / positive.sum()),
                rng.choice(LABEL_DOCUMENTS, LABEL_NEGATIVES, p=size / size.sum()),
            ]
        )
        truth = np.arange(len(docs)) < x["positives"][e]
        yes = rng.random(len(docs)) < np.where(truth, hit[e, docs], false[e, docs])
        scores[(0, e)] = Score(
            0, e, "concept", "own", (0, e), truth=tuple(truth.astype(int)),
            predicted=tuple(yes.astype(int)), documents=tuple(docs.tolist()),
        )  # fmt: skip
    return scores


def label_shape(scores: dict[tuple[int, int], Score]) -> dict[str, float]:
    """A corpus's shape beside the run's: items per document (max, median over documents holding one),
    the share of items in the 6 largest documents, the mean recall and specificity."""
    documents = np.concatenate([np.asarray(s.documents) for s in scores.values()])
    per_document = np.sort(np.bincount(documents, minlength=LABEL_DOCUMENTS))[::-1]
    held = per_document[per_document > 0]
    recall, specificity = [], []
    for s in scores.values():
        y, p = np.asarray(s.truth, bool), np.asarray(s.predicted, bool)
        recall.append(p[y].mean())
        specificity.append((~p[~y]).mean())
    return {
        "items per document, max": float(held[0]),
        "items per document, median": float(np.median(held)),
        "share of items in the 6 largest documents": float(per_document[:6].sum() / per_document.sum()),
        "mean recall": float(np.mean(recall)),
        "mean specificity": float(np.mean(specificity)),
    }


def label_cell(cell: dict[str, float], seeds: int, replicates: int) -> dict[str, Any]:
    """One cell of :func:`label_mean_interval_coverage`: per (method, statistic) each seed's (covered,
    position of the estimate, truth, estimate, truth above the interval, bootstrap bias), the truth and the
    corpora's median shape."""
    x = label_experts(cell)
    truth = label_truth(x)
    keys = [(0, e) for e in range(LABEL_EXPERTS)]
    hits = {(m, s): [] for m in INTERVAL_METHODS for s in LABEL_STATISTICS}
    shapes = []
    for seed in range(seeds):
        scores = planted_label_scores(x, seed)
        shapes.append(label_shape(scores))
        for method in INTERVAL_METHODS:
            for statistic in LABEL_STATISTICS:
                row = document_intervals(
                    keys, scores, {}, statistic, n_resamples=replicates, seed=seed, mean_method=method
                )
                low, high, value, t = row["ci low"], row["ci high"], row["mean"], truth[statistic]
                hits[method, statistic].append(
                    (
                        low <= t <= high,
                        (value - low) / (high - low),
                        t,
                        value,
                        t > high,
                        row["bootstrap bias"],
                    )
                )
    shape = {key: float(np.median([s[key] for s in shapes])) for key in shapes[0]}
    return {"hits": hits, "truth": truth, "shape": shape}


def label_mean_interval_coverage(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of the true mean balanced accuracy, F1 and recall over experts by ``document_intervals``'
    percentile, basic and BCa intervals (the pipeline's :data:`MEAN_METHOD` is BCa), in each cell of
    :data:`LABEL_CELLS`: the rate with its binomial se, the misses' direction (truth above / below the
    interval), the estimate's median position in its interval (0 its lower end), the mean truth, estimate
    and bootstrap bias; the corpora's median shape beside the run's (:data:`LABEL_RUN_SHAPE`)."""
    rates, positions, misses, means, shapes, truths = {}, {}, {}, {}, {}, {}
    for cell_name, cell in LABEL_CELLS.items():
        measured = label_cell(cell, seeds, replicates)
        shapes[cell_name], truths[cell_name] = measured["shape"], measured["truth"]
        for (method, statistic), rows in measured["hits"].items():
            values = np.array(rows, dtype=float)
            key = f"{cell_name}, {method}, {statistic}"
            covered, above = int(values[:, 0].sum()), int(values[:, 4].sum())
            rates[key] = rate(covered, seeds, CONFIDENCE)
            positions[key] = float(np.nanmedian(values[:, 1]))
            misses[key] = {"above": above, "below": seeds - covered - above}
            means[key] = {
                "truth": float(values[:, 2].mean()),
                "estimate": float(values[:, 3].mean()),
                "bootstrap bias": float(values[:, 5].mean()),
            }
    return {
        "rates": rates,
        "median position of the estimate": positions,
        "misses, truth above / below the interval": misses,
        "means": means,
        "truth": truths,
        "shape": shapes,
        "pipeline method": MEAN_METHOD,
        "settings": {
            "experts": LABEL_EXPERTS,
            "documents": LABEL_DOCUMENTS,
            "domains": LABEL_DOMAINS,
            "positives": "20 (6 for 6 experts)",
            "negatives": LABEL_NEGATIVES,
            "home share": LABEL_HOME_SHARE,
            "cells": LABEL_CELLS,
            "statistics": list(LABEL_STATISTICS),
            "methods": list(INTERVAL_METHODS),
            "run shape": LABEL_RUN_SHAPE,
        },
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
# drivers vs domain experts: the document interval of Spearman's rho, at a planted null and away from it
# --------------------------------------------------------------------------------------------------
EFFECT = "remove: effect (report)"
#: The planted kinds of the domain-score study: how each expert's expected removal effect (per token)
#: follows its population domain score (``link`` × score + ``spread`` × a normal draw per expert; both
#: 0: every expert's expected effect is the same, rho's truth 0) and the tokens per document (a range).
#: The confounded kinds give the experts unequal routing: routing weights ``exp(weight sd × a normal
#: draw)``, a domain profile the flatter the more often the expert is routed (Dirichlet concentration
#: ``0.7 × (weight / the layer's geometric-mean weight) ** flattening``), and an expected effect that
#: adds ``frequency link ×`` the expert's population routing frequency × the layer's experts (1 at the
#: mean frequency): domain score and effect both follow routing frequency; with ``link`` 0 there is no
#: direct link (the partial rho's truth 0, the raw rho's not). The kind with differences between layers
#: has ``layers`` layers whose experts' expected effects add ``layer effect step × (layers − 1 − i)`` in
#: the ``i``-th layer and whose Dirichlet concentrations are multiplied by ``exp(layer concentration
#: step × i)`` (the first layer the most domain-specific and the most removal-sensitive, as in a run): a
#: pooled rho, raw or partial, ranks the layers; within each layer there is no direct link (the mean
#: within-layer partial rho's truth 0).
DRIVER_DOMAIN_KINDS = {
    "null": {"link": 0.0, "spread": 0.0, "tokens": (20, 60)},
    "non-null": {"link": 0.3, "spread": 0.06, "tokens": (20, 60)},
    "non-null, 10× the tokens": {"link": 0.3, "spread": 0.06, "tokens": (200, 600)},
    "confounded by routing frequency, no direct link": {
        "link": 0.0,
        "spread": 0.0,
        "tokens": (20, 60),
        "weight sd": 0.8,
        "flattening": 2.0,
        "frequency link": 0.1,
    },
    "confounded by routing frequency, with a direct link": {
        "link": 0.15,
        "spread": 0.03,
        "tokens": (20, 60),
        "weight sd": 0.8,
        "flattening": 2.0,
        "frequency link": 0.1,
    },
    "confounded by routing frequency, with a direct link, 10× the tokens": {
        "link": 0.15,
        "spread": 0.03,
        "tokens": (200, 600),
        "weight sd": 0.8,
        "flattening": 2.0,
        "frequency link": 0.1,
    },
    "4 layers differing in mean effect and specificity, confounded by routing frequency, no direct link, 10× the tokens": {
        "link": 0.0,
        "spread": 0.0,
        "tokens": (200, 600),
        "weight sd": 0.8,
        "flattening": 2.0,
        "frequency link": 0.1,
        "layers": 4,
        "layer effect step": 0.05,
        "layer concentration step": 1.0,
    },
}


def population_domain_scores(
    share: Float[np.ndarray, "layer expert domain"],
) -> Float[np.ndarray, "layer expert"]:
    """``1 − H(π)/log D`` of each expert's expected routing rate per domain token (``π``: the rates
    normalized over the domains), computed by hand: the domain score on infinitely many documents."""
    shares = share / share.sum(-1, keepdims=True)
    return 1.0 + scipy.special.xlogy(shares, shares).sum(-1) / np.log(share.shape[-1])


def routing_shares(
    rng: np.random.Generator,
    n_layers: int,
    n_experts: int,
    n_domains: int,
    weight_sd: float,
    flattening: float,
    layer_step: float = 0.0,
) -> Float[np.ndarray, "layer expert domain"]:
    """Each expert's share of each domain's routed slots in its layer. Equal routing (``weight_sd`` 0):
    a Dirichlet(0.7) profile per expert, shared over the layer's experts in proportion. Unequal: routing
    weights ``exp(weight_sd × z)`` and a Dirichlet profile of concentration ``0.7 × (weight / the layer's
    geometric-mean weight) ** flattening`` (flatter for an expert routed more often), shared in proportion
    to weight × profile; the ``i``-th layer's concentrations are multiplied by ``exp(layer_step × i)``."""
    if weight_sd == 0:
        profile = rng.dirichlet(np.full(n_domains, 0.7), (n_layers, n_experts))  # [layer, expert, domain]
        return profile / profile.sum(1, keepdims=True)
    z = rng.normal(size=(n_layers, n_experts))
    log_weight = weight_sd * (z - z.mean(1, keepdims=True))
    concentration = 0.7 * np.exp(flattening * log_weight + layer_step * np.arange(n_layers)[:, None])
    draws = rng.gamma(np.repeat(concentration[..., None], n_domains, -1))
    profile = np.exp(log_weight)[..., None] * draws / draws.sum(-1, keepdims=True)
    return profile / profile.sum(1, keepdims=True)


def driver_domain_case(
    seed: int,
    link: float = 0.0,
    spread: float = 0.0,
    tokens: tuple[int, int] = (20, 60),
    n_docs: int = 90,
    n_layers: int = 2,
    n_experts: int = 16,
    n_domains: int = 3,
    **confound: float,
) -> tuple[pd.DataFrame, pd.DataFrame, ReportDocuments, DomainRouting, Float[np.ndarray, "3 layer expert"]]:
    """Drivers and domains frames, report documents and both halves' routing: each expert has a share of
    each domain's slots (:func:`routing_shares`; ``confound``: ``weight sd``, ``flattening``, ``frequency
    link``, ``layers``, ``layer effect step`` and ``layer concentration step`` of
    :data:`DRIVER_DOMAIN_KINDS`, 0 or the arguments by default), a document routes
    ``2 × tokens`` slots (top-2) to the experts by those shares (Poisson counts), so an expert's routing
    rate per domain token is its share. Each expert's expected removal effect per token is ``link ×`` its
    population domain score ``+ spread ×`` a normal draw ``+ frequency link ×`` its population routing
    frequency × the layer's experts ``+`` its layer's effect step; per report document its effect sum is
    that times the document's tokens plus noise (sd 1 per token). Documents alternate between the selection half (even) and the
    report half (odd). Returns the four inputs of ``compare_drivers_with_domain_experts`` and
    ``[3, layer, expert]``: every expert's population domain score (:func:`population_domain_scores`),
    expected effect per token and population routing frequency (its mean share over the domains, whose
    documents are equally many and equally long in expectation)."""
    weight_sd, flattening = confound.get("weight sd", 0.0), confound.get("flattening", 0.0)
    frequency_link = confound.get("frequency link", 0.0)
    n_layers = int(confound.get("layers", n_layers))
    layer_effect = confound.get("layer effect step", 0.0) * (n_layers - 1 - np.arange(n_layers))[:, None]
    rng = np.random.default_rng(seed)
    layers = np.repeat(np.arange(1, n_layers + 1), n_experts)
    experts = np.tile(np.arange(n_experts), n_layers)
    domain = np.arange(n_docs) % n_domains
    counts_all = rng.integers(*tokens, n_docs).astype(float)
    share = routing_shares(
        rng,
        n_layers,
        n_experts,
        n_domains,
        weight_sd,
        flattening,
        confound.get("layer concentration step", 0.0),
    )
    routed = rng.poisson(2 * counts_all * share[..., domain]).astype(float)  # [layer, expert, document]
    frequency = share.mean(-1)
    expected = link * population_domain_scores(share) + spread * rng.normal(size=(n_layers, n_experts))
    expected = expected + frequency_link * frequency * n_experts + layer_effect
    selection, report = np.arange(0, n_docs, 2), np.arange(1, n_docs, 2)
    counts = counts_all[report]
    noise = rng.normal(0, 1.0, (n_layers, n_experts, len(report))) * np.sqrt(counts)
    sums = expected[..., None] * counts + noise
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
        layer_ids,
        routed[..., selection],
        domain[selection],
        n_domains,
        (routed[..., report] > 0).sum(-1),
        routed[..., report],
    )
    population = np.stack([population_domain_scores(share), expected, frequency])
    return drivers, domains, ReportDocuments(layer_ids, sums, counts), routing, population


def domain_rho_truth(comparison, scores_and_effects: np.ndarray, layer: object) -> float:
    """The population rho of one row of the comparison's table: Spearman's rho of the experts' population
    domain scores and expected effects, over the experts in its rho (the document gate, decided on
    counts); 0 when every expected effect is the same (no relation)."""
    experts = comparison.experts
    picked = experts["in ρ"].to_numpy(bool).copy()
    if layer != "all":
        picked &= experts["layer"].to_numpy() == layer
    rows, columns = experts["layer"].to_numpy(int)[picked] - 1, experts["expert"].to_numpy(int)[picked]
    score, effect = scores_and_effects[0][rows, columns], scores_and_effects[1][rows, columns]
    return 0.0 if np.ptp(effect) == 0 else float(scipy.stats.spearmanr(score, effect).statistic)


def domain_partial_truth(comparison, population: np.ndarray, layer: object) -> float:
    """The population partial rho of one row of the comparison's table, computed by hand: the experts'
    population domain scores, expected effects and population routing frequencies over the experts in its
    rho (the document gate) are ranked, the score's and the effect's ranks regressed on a line in the
    frequency's ranks (least squares), and the Pearson correlation of the two residuals taken; 0 when
    either residual vanishes (every expected effect the same, or the effect a monotone function of the
    routing frequency: no link beyond it)."""
    experts = comparison.experts
    picked = experts["in ρ"].to_numpy(bool).copy()
    if layer != "all":
        picked &= experts["layer"].to_numpy() == layer
    rows, columns = experts["layer"].to_numpy(int)[picked] - 1, experts["expert"].to_numpy(int)[picked]
    score, effect, frequency = (scipy.stats.rankdata(values[rows, columns]) for values in population)
    line = np.stack([np.ones_like(frequency), frequency], 1)
    residuals = [values - line @ np.linalg.lstsq(line, values, rcond=None)[0] for values in (score, effect)]
    if min(np.linalg.norm(r) for r in residuals) < 1e-9 * len(frequency):
        return 0.0
    return float(np.corrcoef(*residuals)[0, 1])


def domain_within_partial_truth(comparison, population: np.ndarray) -> float:
    """The population mean within-layer partial rho: the mean of :func:`domain_partial_truth` over the
    layers whose partial rho the comparison averages (those with a defined partial rho)."""
    table = comparison.table
    layers = table[(table["layer"] != "all") & (table["partial spearman unavailable"] == "")]["layer"]
    return float(np.mean([domain_partial_truth(comparison, population, layer) for layer in layers]))


def seed_clustered_rate(covered: Float[np.ndarray, "seed interval"], nominal: float) -> dict[str, Any]:
    """The share of all intervals covered, with a standard error over seeds: each seed's share of its
    intervals covered is one independent value (a seed's intervals share its documents), se = their
    sd / √seeds. An unavailable interval (NaN in ``covered``) is left out and counted as ``no interval``."""
    available = ~np.isnan(covered)
    kept = available.any(1)  # a seed whose every interval is unavailable has no share
    per_seed = np.nansum(covered[kept], 1) / available[kept].sum(1)
    return {
        "rate": float(per_seed.mean()),
        "hits": int(np.nansum(covered)),
        "n": int(available.sum()),
        "no interval": int((~available).sum()),
        "seeds": len(per_seed),
        "se over seeds": float(per_seed.std(ddof=1) / math.sqrt(len(per_seed)))
        if len(per_seed) > 1
        else math.nan,
        "nominal": nominal,
    }


def power(hits: int, n: int) -> dict[str, Any]:
    """``hits`` of ``n`` as a rate with its binomial standard error (no nominal level: a power)."""
    r = hits / n
    return {"rate": r, "hits": int(hits), "n": int(n), "se": math.sqrt(r * (1 - r) / n)}


def miss_counts(covered: int, above: int, available: int, seeds: int) -> dict[str, int]:
    """The misses of ``available`` intervals by the truth's side, and the seeds without an interval."""
    return {"above": above, "below": available - covered - above, "no interval": seeds - available}


def _coverage_record(hits: dict[str, list[tuple[float, ...]]], kind: str, seeds: int) -> dict[str, Any]:
    """One kind's coverage of one statistic per interval label: ``hits[label]`` holds per seed (covered,
    position of the estimate in its interval, truth, estimate, truth above the interval); a seed whose
    interval is unavailable (NaN: a resample's statistic undefined) is left out of the rate and counted."""
    record: dict[str, dict[str, Any]] = {
        "rates": {},
        "misses, truth above / below the interval": {},
        "median position of the estimate": {},
        "mean truth": {},
        "mean estimate": {},
    }
    for label, rows in hits.items():
        values = np.array(rows, dtype=float)
        key, covered = f"{kind}, {label}", int(np.nansum(values[:, 0]))
        available = int((~np.isnan(values[:, 0])).sum())
        above = int(np.nansum(values[:, 4]))
        record["rates"][key] = rate(covered, available, CONFIDENCE)
        record["misses, truth above / below the interval"][key] = miss_counts(
            covered, above, available, seeds
        )
        record["median position of the estimate"][key] = float(np.nanmedian(values[:, 1]))
        record["mean truth"][key], record["mean estimate"][key] = (
            float(values[:, 2].mean()),
            float(np.nanmean(values[:, 3])),
        )
    covered = np.array([[row[0] for row in rows] for rows in hits.values()], dtype=float).T
    record["every interval of a kind"] = {kind: seed_clustered_rate(covered, CONFIDENCE)}
    return record


def _interval_hit(row: pd.Series, prefix: str, truth: float) -> tuple[float, ...]:
    """(covered, position of the estimate, truth, estimate, truth above the interval) of one ρ of a row;
    NaN for covered and above when the interval is unavailable."""
    low, high, estimate = row[f"{prefix} ci low"], row[f"{prefix} ci high"], row[prefix]
    if not (np.isfinite(low) and np.isfinite(high)):
        return (math.nan, math.nan, truth, estimate, math.nan)
    position = (estimate - low) / (high - low) if high > low else math.nan
    return (float(low <= truth <= high), position, truth, estimate, float(truth > high))


def _merge(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The kinds' coverage records as one, each field a dict over every kind's keys."""
    return {field: {k: v for record in records for k, v in record[field].items()} for field in records[0]}


def driver_domain_rho(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of rho's truth by ``compare_drivers_with_domain_experts``' document interval of Spearman's
    rho (domain score on the selection half vs removal effect on the report half, each half resampled
    within itself), per layer and over all layers, for each kind of :data:`DRIVER_DOMAIN_KINDS`: rates
    per interval (independent seeds: binomial se), the misses' direction, the median position of the
    estimate, the mean truth and estimate, and per kind the share of all its intervals covered with a se
    over seeds; the same for the partial rho given routing frequency against its truth
    (:func:`domain_partial_truth`), and how often rho's interval excludes 0."""
    raw, partial, within, excludes, partial_excludes = [], [], [], {}, {}
    for kind, planted in DRIVER_DOMAIN_KINDS.items():
        hits: dict[str, list[tuple[float, ...]]] = {}
        partial_hits: dict[str, list[tuple[float, ...]]] = {}
        within_hits: dict[str, list[tuple[float, ...]]] = {}
        for seed in range(seeds):
            drivers, domains, documents, routing, truth = driver_domain_case(seed, **planted)
            comparison = compare_drivers_with_domain_experts(
                drivers, domains, documents=documents, routing=routing, n_resamples=replicates, seed=seed
            )
            for _, row in comparison.table.iterrows():
                label = "over all layers" if row["layer"] == "all" else f"layer {row['layer']}"
                true = domain_rho_truth(comparison, truth, row["layer"])
                hits.setdefault(label, []).append(_interval_hit(row, "spearman", true))
                true = domain_partial_truth(comparison, truth, row["layer"])
                partial_hits.setdefault(label, []).append(_interval_hit(row, "partial spearman", true))
                low, high = row["spearman ci low"], row["spearman ci high"]
                excludes.setdefault(f"{kind}, {label}", []).append(bool(low > 0 or high < 0))
                if row["layer"] == "all":
                    true = domain_within_partial_truth(comparison, truth)
                    within_hits.setdefault(label, []).append(_interval_hit(row, WITHIN_PARTIAL, true))
                    for prefix, name in (
                        ("partial spearman", "pooled"),
                        (WITHIN_PARTIAL, "mean within-layer"),
                    ):
                        low, high = row[f"{prefix} ci low"], row[f"{prefix} ci high"]
                        partial_excludes.setdefault(f"{kind}, {name}", []).append(bool(low > 0 or high < 0))
        raw.append(_coverage_record(hits, kind, seeds))
        partial.append(_coverage_record(partial_hits, kind, seeds))
        within.append(_coverage_record(within_hits, kind, seeds))
    return {
        **_merge(raw),
        "partial given routing frequency": _merge(partial),
        "mean within-layer partial given routing frequency": _merge(within),
        "rho's interval excludes 0": {key: power(sum(v), len(v)) for key, v in excludes.items()},
        "partial rho's interval excludes 0, over all layers": {
            key: power(sum(v), len(v)) for key, v in partial_excludes.items()
        },
        "settings": {
            "documents": 90,
            "domains": 3,
            "layers": 2,
            "experts per layer": 16,
            "kinds": {
                kind: {**planted, "tokens": list(planted["tokens"])}
                for kind, planted in DRIVER_DOMAIN_KINDS.items()
            },
            "se of every interval of a kind": "over seeds (each seed's share of its intervals covered: one per layer and one over all layers)",
            "routing frequency": "each expert's share of its layer's routed slots on the documents of both halves",
            "partial rho": "Pearson partial correlation of the ranks (score and effect given routing frequency)",
            "mean within-layer partial rho": "the mean over the layers of each layer's partial rho (the "
            "layer-controlled headline; its truth the mean of the layers' population partial rhos)",
        },
    }


# --------------------------------------------------------------------------------------------------
# drivers: Holm over domains with no true gain; the mean within-layer rho of a between-layer ranking
# --------------------------------------------------------------------------------------------------
def driver_holm_null(seeds: int, replicates: int) -> dict[str, Any]:
    """``holm_adjusted`` over 5 domains × 40 documents with no true gain, on its one-draw path (each
    domain's per-document sums given as one 1-D array: the documents-only percentile bootstrap, not the
    drivers' default 20-draw path, whose draw-mean t tests ``reweighting_holm`` measures): how often some
    domain is called improved (rejected with a negative difference) and how often some domain is
    rejected either way, at family-wise 5%."""
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
        "settings": {"domains": 5, "documents per domain": 40, "control draws": 1},
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
    estimate, when the estimate ranks layers and nothing inside them, and how often the pooled rho's
    interval lies above 0.5 there (a power: the pooled rho's truth is well above 0.5, so this share has
    no nominal level; its record carries the coverage's 0.95 only as the field every rate has)."""
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
# held-out probing: which paired interval method (percentile, BCa, basic) covers best, without the gate
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
    document-bootstrap intervals, and the median relative position of the estimate in its interval,
    WITHOUT the per-concept gate: its rare concepts are those the gate drops, so it shows why the gate
    exists; :func:`gated_interval_method_coverage` measures the regime the reported numbers live in."""
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


# --------------------------------------------------------------------------------------------------
# held-out probing: the same three methods in the regime the gate leaves (the toy run's shape)
# --------------------------------------------------------------------------------------------------
#: Per concept of the gated study: (hit rate of arm a, of arm b, false-alarm rate of both, share of the
#: documents holding positives). A share of 1: Poisson(15) positives in every document; below 1:
#: positives in that share of the documents only, 1 + Poisson(20 · Pareto(1.5)) of them (a few documents
#: carry most), so the gate's count of documents with positives sits near its 30 (expected 32, 36, 40).
GATED_CONCEPTS = (
    (0.90, 0.85, 0.10, 1.0),
    (0.75, 0.75, 0.15, 1.0),
    (0.85, 0.80, 0.10, 1.0),
    (0.70, 0.72, 0.20, 1.0),
    (0.80, 0.60, 0.20, 0.26),
    (0.90, 0.75, 0.10, 0.29),
    (0.65, 0.70, 0.25, 0.32),
)
#: Test documents of the planted run: the toy default run's (docs/results/toy_default.json, "on 124 test
#: documents").
GATED_DOCUMENTS = 124
#: The sd of the per-document difficulty shared by the arms (on the logit of the hit rate: common concepts,
#: concepts near the gate), and of the per-document shift of the false-alarm rate (also shared).
GATED_DIFFICULTY, GATED_ALARM_SHIFT = (0.5, 1.0), 0.5
#: The truth's large sample: chunks of documents drawn by :func:`gated_counts` with seeds 10**6 + i.
GATED_TRUTH_CHUNKS, GATED_TRUTH_CHUNK = 10, 100_000
#: The cells of the study: a planted difference (arm b's hit rates as listed) and a planted null (arm b
#: scored with arm a's rates, so the true difference is 0 in both metrics by construction).
GATED_CELLS = {"planted difference": False, "planted null": True}
GATED_NAMES = tuple(
    f"planted_{'common' if share == 1 else 'near_gate'}_{c}" for c, (*_, share) in enumerate(GATED_CONCEPTS)
)


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def gated_counts(
    seed: int, n_docs: int = GATED_DOCUMENTS, null: bool = False
) -> tuple[Float[np.ndarray, "concept doc 4"], Float[np.ndarray, "concept doc 4"]]:
    """``[concept, doc, 4]`` confusion counts (TP, FN, FP, TN) of two arms scoring the same tokens of
    ``n_docs`` test documents: per concept of :data:`GATED_CONCEPTS`, positives as listed there and
    Poisson(50) negatives per document; a document's difficulty (normal on the logit of the hit rate)
    and false-alarm shift (normal on the logit of the false-alarm rate) are shared by the arms. ``null``:
    arm b scored with arm a's rates."""
    rng = np.random.default_rng(seed)
    counts_a = np.zeros((len(GATED_CONCEPTS), n_docs, 4))
    counts_b = np.zeros_like(counts_a)
    for c, (hit_a, hit_b, false_alarm, share) in enumerate(GATED_CONCEPTS):
        common = share == 1
        if common:
            positives = rng.poisson(15.0, n_docs)
        else:
            sizes = 1 + rng.poisson(20 * rng.pareto(1.5, n_docs))
            positives = np.where(rng.random(n_docs) < share, sizes, 0)
        negatives = rng.poisson(50, n_docs)
        difficulty = rng.normal(0, GATED_DIFFICULTY[0 if common else 1], n_docs)
        alarm = _logistic(_logit(false_alarm) + rng.normal(0, GATED_ALARM_SHIFT, n_docs))
        for counts, hit in ((counts_a, hit_a), (counts_b, hit_a if null else hit_b)):
            tp = rng.binomial(positives, _logistic(_logit(hit) + difficulty))
            fp = rng.binomial(negatives, alarm)
            counts[c, :, TP], counts[c, :, FN] = tp, positives - tp
            counts[c, :, FP], counts[c, :, TN] = fp, negatives - fp
    return counts_a, counts_b


#: The metrics of the gated study, as ``compare`` names them, with their scores.
GATED_METRICS = {"balanced_accuracy": balanced_accuracy, "f1": balanced_f1}


@functools.cache
def gated_truth(
    null: bool, chunks: int = GATED_TRUTH_CHUNKS, chunk: int = GATED_TRUTH_CHUNK
) -> dict[str, Any]:
    """Each concept's true paired difference (arm a − arm b) per metric: the score of each arm's
    confusion counts summed over ``chunks`` × ``chunk`` documents of :func:`gated_counts` (seeds
    10**6 + i), the population value of a score of summed counts; with its se from the spread of the
    chunks' own differences. The truth of a seed is the mean over the concepts its gate keeps."""
    totals = np.zeros((2, chunks, len(GATED_CONCEPTS), 4))
    for i in range(chunks):
        for side, counts in enumerate(gated_counts(10**6 + i, chunk, null)):
            totals[side, i] = counts.sum(1)
    out = {}
    for metric, score in GATED_METRICS.items():
        pooled = score(totals[0].sum(0)) - score(totals[1].sum(0))
        each = score(totals[0]) - score(totals[1])  # [chunk, concept]
        out[metric] = {"per concept": pooled, "se": each.std(0, ddof=1) / math.sqrt(chunks)}
    return out


def gated_truth_by_hand(null: bool) -> dict[str, np.ndarray]:
    """Each concept's true paired difference per metric by quadrature: the difficulty is independent of
    the counts, so a probe's pooled hit rate is ``E[logistic(logit(hit) + d)]`` and its false-alarm rate
    ``E[logistic(logit(fa) + e)]`` (Gauss–Hermite over the normal shifts); balanced accuracy is
    ``(TPR + 1 − FPR) / 2`` and class-balanced F1 ``2 TPR / (1 + TPR + FPR)``."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()

    def mean_rate(p: float, sd: float) -> float:
        return float(weights @ _logistic(_logit(p) + sd * nodes))

    out = {metric: [] for metric in GATED_METRICS}
    for hit_a, hit_b, false_alarm, share in GATED_CONCEPTS:
        sd = GATED_DIFFICULTY[0 if share == 1 else 1]
        fpr = mean_rate(false_alarm, GATED_ALARM_SHIFT)
        tpr = [mean_rate(hit, sd) for hit in (hit_a, hit_a if null else hit_b)]
        out["balanced_accuracy"].append((tpr[0] - tpr[1]) / 2)
        f1 = [2 * t / (1 + t + fpr) for t in tpr]
        out["f1"].append(f1[0] - f1[1])
    return {metric: np.array(values) for metric, values in out.items()}


def gated_arm(name: str, counts: Float[np.ndarray, "concept doc 4"]) -> HeldOutArm:
    """An arm of ``compare`` holding the chosen probes' test-document counts at k = 1."""
    return HeldOutArm(
        name, pd.DataFrame(), pd.DataFrame(), counts[None], GATED_NAMES, (1,), np.arange(counts.shape[1])
    )


def gated_seed(
    counts: tuple[np.ndarray, np.ndarray], seed: int, replicates: int
) -> tuple[list[str], dict[tuple[str, str], tuple[float, float, float]]]:
    """One seed of the gated study on its two arms' ``counts`` (:func:`gated_counts`): the concepts the
    pipeline's gate keeps (``concept_gate``, as ``compare`` applies it) and ``(estimate, low, high)`` per
    (method, metric): the pipeline's own interval from ``compare`` for ``PAIRED_METHOD``,
    ``cluster_bootstrap`` of the same paired statistic (``_difference_statistic`` over the kept concepts,
    the same seed, so the same resamples) for the other methods."""
    counts_a, counts_b = counts
    kept, _ = concept_gate(GATED_NAMES, [("a", counts_a), ("b", counts_b)], MIN_DOCUMENTS)
    if not kept:
        return kept, {}
    records = compare(gated_arm("a", counts_a), gated_arm("b", counts_b), n_resamples=replicates, seed=seed)
    index = [GATED_NAMES.index(name) for name in kept]
    side = Side(counts_a[index], (counts_b[index],))
    rows = {}
    for record in records:
        if record["n_concepts"] != len(kept) or record["interval_method"] != PAIRED_METHOD:
            raise RuntimeError(
                f"compare kept {record['n_concepts']} concepts with a {record['interval_method']} interval; "
                f"the gate kept {len(kept)}, PAIRED_METHOD is {PAIRED_METHOD}"
            )
        metric = record["metric"]
        rows[PAIRED_METHOD, metric] = (record["estimate"], record["ci_low"], record["ci_high"])
        paired = _difference_statistic([side], GATED_METRICS[metric])
        for method in INTERVAL_METHODS:
            if method != PAIRED_METHOD:
                interval = cluster_bootstrap(
                    lambda w, paired=paired: paired(w)[0],
                    GATED_DOCUMENTS,
                    n_resamples=replicates,
                    method=method,
                    seed=seed,
                )
                rows[method, metric] = (interval.estimate, interval.low, interval.high)
    return kept, rows


def gated_cell(null: bool, seeds: int, replicates: int) -> dict[str, Any]:
    """One cell of the gated study (a planted difference, or the planted null): per (method, metric) each
    seed's (covered, position of the estimate, truth above the interval), and what the gate kept."""
    truth = gated_truth(null)
    hits = {(m, metric): [] for m in INTERVAL_METHODS for metric in GATED_METRICS}
    kept_counts, with_positives = [], []
    kept_by_concept = dict.fromkeys(GATED_NAMES, 0)
    for seed in range(seeds):
        counts = gated_counts(seed, null=null)
        kept, rows = gated_seed(counts, seed, replicates)
        kept_counts.append(len(kept))
        for name in kept:
            kept_by_concept[name] += 1
        with_positives.append(((counts[0][..., TP] + counts[0][..., FN]) > 0).sum(1))
        index = [GATED_NAMES.index(name) for name in kept]
        for (method, metric), (value, low, high) in rows.items():
            t = 0.0 if null else float(truth[metric]["per concept"][index].mean())
            hits[method, metric].append((low <= t <= high, (value - low) / (high - low), t > high))
    return {"hits": hits, "gate": gate_summary(kept_counts, kept_by_concept, np.array(with_positives))}


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"min": int(np.min(values)), "median": float(np.median(values)), "max": int(np.max(values))}


def gate_summary(
    kept_counts: list[int], kept_by_concept: dict[str, int], with_positives: Int[np.ndarray, "seed concept"]
) -> dict[str, Any]:
    """What the gate kept over the seeds of a cell: the concepts kept per seed, the seeds keeping each
    concept, and each concept's test documents holding a positive (arm a)."""
    return {
        "seeds with a concept kept": int(sum(n > 0 for n in kept_counts)),
        "concepts kept per seed": _spread(np.array(kept_counts)),
        "seeds keeping each concept": kept_by_concept,
        "documents with positives per concept": {
            name: _spread(with_positives[:, c]) for c, name in enumerate(GATED_NAMES)
        },
    }


def gated_truth_record(null: bool) -> dict[str, dict[str, Any]]:
    """Per metric: the large sample's mean difference with every concept kept and its se, the same by
    quadrature, and each concept's large-sample difference."""
    truth, by_hand = gated_truth(null), gated_truth_by_hand(null)
    return {
        metric: {
            "every concept kept": float(truth[metric]["per concept"].mean()),
            "se": float(math.sqrt((truth[metric]["se"] ** 2).sum()) / len(GATED_CONCEPTS)),
            "by hand": float(by_hand[metric].mean()),
            "per concept": dict(zip(GATED_NAMES, map(float, truth[metric]["per concept"]), strict=True)),
        }
        for metric in GATED_METRICS
    }


# --------------------------------------------------------------------------------------------------
# held-out probing: the gated study at the run's own structure (one shared subset, arm-specific noise)
# --------------------------------------------------------------------------------------------------
#: Per concept of the run-shaped cells: (hit rate of arm a, of arm b, false-alarm rate of both). The
#: first :data:`RUN_COMMON` have Poisson(15) positives in every test document (the toy run's 7 kept text
#: concepts, positives in all 124 test documents); the other 11 (its 11 kept latex concepts) have their
#: positives only in one subset of :data:`RUN_SUBSET` documents shared by all of them.
RUN_CONCEPTS = (
    (0.90, 0.85, 0.10),
    (0.75, 0.75, 0.15),
    (0.85, 0.80, 0.10),
    (0.70, 0.72, 0.20),
    (0.80, 0.78, 0.12),
    (0.88, 0.84, 0.08),
    (0.72, 0.70, 0.18),
    (0.80, 0.60, 0.20),
    (0.90, 0.75, 0.10),
    (0.65, 0.70, 0.25),
    (0.85, 0.80, 0.15),
    (0.75, 0.70, 0.20),
    (0.92, 0.85, 0.08),
    (0.70, 0.65, 0.22),
    (0.82, 0.80, 0.12),
    (0.78, 0.70, 0.18),
    (0.88, 0.82, 0.10),
    (0.68, 0.66, 0.24),
)
RUN_COMMON = 7
#: The documents of the shared subset: the test documents holding a positive of the toy default run's kept
#: latex concepts (docs/results/toy_default.json, probing groups, latex, ``n_documents_with_positives``).
RUN_SUBSET = 34
#: The chance that a subset concept has positives in a given subset document (so each holds positives in
#: about 32 of the 34, and the gate, at 30, drops one now and then).
RUN_PRESENCE = 0.95
#: The sd of the per-document noise each arm draws on its own (on the logit of the hit and the false-alarm
#: rates), per cell: none (the arms share every document's difficulty), 0.5 and 1.
RUN_ARM_NOISE = (0.0, 0.5, 1.0)
RUN_NAMES = tuple(f"run_{'common' if c < RUN_COMMON else 'subset'}_{c}" for c in range(len(RUN_CONCEPTS)))


def run_cell_name(arm_sd: float, null: bool) -> str:
    """The name of a run-shaped cell: the planted difference or null and the arm-specific noise's sd."""
    return f"{'planted null' if null else 'planted difference'}, shared subset, arm noise sd {arm_sd:g}"


def run_shaped_counts(
    seed: int, arm_sd: float, null: bool = False, n_docs: int = GATED_DOCUMENTS, subset: int = RUN_SUBSET
) -> tuple[Float[np.ndarray, "concept doc 4"], Float[np.ndarray, "concept doc 4"]]:
    """``[concept, doc, 4]`` confusion counts (TP, FN, FP, TN) of two arms scoring the same tokens of
    ``n_docs`` test documents, per concept of :data:`RUN_CONCEPTS`: the common ones with Poisson(15)
    positives in every document, the others with 1 + Poisson(20 · Pareto(1.5)) positives in each document
    of ONE random subset of ``subset`` documents shared by all of them (each present there with chance
    :data:`RUN_PRESENCE`); Poisson(50) negatives per document. Per concept and document a difficulty
    (logit sd 0.5 common, 1 in the subset) and a false-alarm shift (sd 0.5) shared by the arms, plus
    noise each arm draws on its own (normal, sd ``arm_sd``, on both logits). ``null``: arm b scored with
    arm a's rates."""
    rng = np.random.default_rng(seed)
    shared = np.zeros(n_docs, bool)
    shared[rng.choice(n_docs, subset, replace=False)] = True
    counts_a = np.zeros((len(RUN_CONCEPTS), n_docs, 4))
    counts_b = np.zeros_like(counts_a)
    for c, (hit_a, hit_b, false_alarm) in enumerate(RUN_CONCEPTS):
        common = c < RUN_COMMON
        if common:
            positives = rng.poisson(15.0, n_docs)
        else:
            sizes = 1 + rng.poisson(20 * rng.pareto(1.5, n_docs))
            positives = np.where(shared & (rng.random(n_docs) < RUN_PRESENCE), sizes, 0)
        negatives = rng.poisson(50, n_docs)
        difficulty = rng.normal(0, GATED_DIFFICULTY[0 if common else 1], n_docs)
        alarm = rng.normal(0, GATED_ALARM_SHIFT, n_docs)
        for counts, hit in ((counts_a, hit_a), (counts_b, hit_a if null else hit_b)):
            own_hit, own_alarm = rng.normal(0, arm_sd, (2, n_docs)) if arm_sd > 0 else (0.0, 0.0)
            tp = rng.binomial(positives, _logistic(_logit(hit) + difficulty + own_hit))
            fp = rng.binomial(negatives, _logistic(_logit(false_alarm) + alarm + own_alarm))
            counts[c, :, TP], counts[c, :, FN] = tp, positives - tp
            counts[c, :, FP], counts[c, :, TN] = fp, negatives - fp
    return counts_a, counts_b


def run_shaped_truth(arm_sd: float, null: bool) -> dict[str, np.ndarray]:
    """Each run-shaped concept's true paired difference per metric by Gauss–Hermite quadrature: the
    difficulty and the noise are independent of the counts, so a probe's pooled hit rate is
    ``E[logistic(logit(hit) + d)]`` with ``d`` normal of the shared and the arm's sd combined (likewise the
    false-alarm rate); balanced accuracy ``(TPR + 1 − FPR) / 2``, class-balanced F1 ``2 TPR / (1 + TPR +
    FPR)``. ``tests/test_gated_interval_coverage.py`` checks it against counts summed over many documents."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()

    def mean_rate(p: float, sd: float) -> float:
        return float(weights @ _logistic(_logit(p) + sd * nodes))

    out = {metric: [] for metric in GATED_METRICS}
    for c, (hit_a, hit_b, false_alarm) in enumerate(RUN_CONCEPTS):
        sd = math.hypot(GATED_DIFFICULTY[0 if c < RUN_COMMON else 1], arm_sd)
        fpr = mean_rate(false_alarm, math.hypot(GATED_ALARM_SHIFT, arm_sd))
        tpr = [mean_rate(hit, sd) for hit in (hit_a, hit_a if null else hit_b)]
        out["balanced_accuracy"].append((tpr[0] - tpr[1]) / 2)
        out["f1"].append(2 * tpr[0] / (1 + tpr[0] + fpr) - 2 * tpr[1] / (1 + tpr[1] + fpr))
    return {metric: np.array(values) for metric, values in out.items()}


def run_shaped_seed(
    counts: tuple[np.ndarray, np.ndarray], seed: int, replicates: int
) -> tuple[list[str], dict[str, tuple[float, float, float]]]:
    """One seed of a run-shaped cell: the concepts ``compare``'s gate keeps and, per metric, the pipeline's
    ``(estimate, low, high)`` from ``compare`` on the two arms' counts."""
    arms = [
        HeldOutArm(name, pd.DataFrame(), pd.DataFrame(), c[None], RUN_NAMES, (1,), np.arange(c.shape[1]))
        for name, c in zip("ab", counts, strict=True)
    ]
    kept, _ = concept_gate(RUN_NAMES, [("a", counts[0]), ("b", counts[1])], MIN_DOCUMENTS)
    if not kept:
        return kept, {}
    records = compare(*arms, n_resamples=replicates, seed=seed)
    return kept, {r["metric"]: (r["estimate"], r["ci_low"], r["ci_high"]) for r in records}


def run_shaped_cell(arm_sd: float, null: bool, seeds: int, replicates: int) -> dict[str, Any]:
    """One run-shaped cell over ``seeds`` seeds: per metric the pipeline's coverage of each seed's truth
    (the mean over its kept concepts of :func:`run_shaped_truth`), the estimate's median position in its
    interval and the misses' sides; the subset concepts kept per seed."""
    truth = run_shaped_truth(arm_sd, null)
    rows = {metric: [] for metric in GATED_METRICS}
    subset_kept = []
    for seed in range(seeds):
        kept, intervals = run_shaped_seed(run_shaped_counts(seed, arm_sd, null), seed, replicates)
        subset_kept.append(sum("subset" in name for name in kept))
        index = [RUN_NAMES.index(name) for name in kept]
        for metric, (value, low, high) in intervals.items():
            t = float(truth[metric][index].mean())
            rows[metric].append((low <= t <= high, (value - low) / (high - low), t > high))
    out = {"subset concepts kept per seed": _spread(np.array(subset_kept))}
    for metric, hits in rows.items():
        covered, above = sum(c for c, _, _ in hits), sum(a for _, _, a in hits)
        out[metric] = {
            "rate": rate(covered, len(hits), CONFIDENCE),
            "median position of the estimate": float(np.median([p for _, p, _ in hits])),
            "misses, truth above / below the interval": {
                "above": above,
                "below": len(hits) - covered - above,
            },
            "truth, every concept kept": float(truth[metric].mean()),
        }
    return out


def run_shaped_cells(seeds: int, replicates: int) -> dict[str, Any]:
    """The run-shaped cells (:func:`run_shaped_cell`) for every arm-noise sd of :data:`RUN_ARM_NOISE`, on a
    planted difference and a planted null, with their settings."""
    cells = {
        run_cell_name(sd, null): run_shaped_cell(sd, null, seeds, replicates)
        for sd in RUN_ARM_NOISE
        for null in (False, True)
    }
    return {
        "cells": cells,
        "settings": {
            "documents": GATED_DOCUMENTS,
            "common concepts": RUN_COMMON,
            "subset concepts": len(RUN_CONCEPTS) - RUN_COMMON,
            "shared subset documents": RUN_SUBSET,
            "presence in a subset document": RUN_PRESENCE,
            "arm noise sd": list(RUN_ARM_NOISE),
            "concepts": {
                name: dict(zip(("hit rate a", "hit rate b", "false-alarm rate"), row, strict=True))
                for name, row in zip(RUN_NAMES, RUN_CONCEPTS, strict=True)
            },
            "truth": "by quadrature (run_shaped_truth)",
        },
    }


def gated_interval_method_coverage(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of the true paired held-out difference, in balanced accuracy and class-balanced F1, by the
    percentile, basic and BCa document intervals at the toy run's shape (124 test documents) with the
    pipeline's per-concept gate applied, on a planted difference and a planted null; the estimate's
    median position in each interval, the side of the misses, and what the gate kept. On the planted
    difference a seed's truth is the mean, over the concepts its gate keeps, of each concept's
    large-sample difference (:func:`gated_truth`); on the planted null it is 0 by construction (the
    large sample's value is recorded as a check). Then the run-shaped cells (:func:`run_shaped_cells`):
    the near-gate concepts in one shared subset of documents, per-document noise of each arm's own, the
    pipeline's interval only, with their own time."""
    rates, positions, misses, truths, gate = {}, {}, {}, {}, {}
    for cell, null in GATED_CELLS.items():
        measured = gated_cell(null, seeds, replicates)
        for (method, metric), rows in measured["hits"].items():
            key = f"{cell}, {method}, {metric}"
            rates[key] = rate(sum(c for c, _, _ in rows), len(rows), CONFIDENCE)
            positions[key] = float(np.median([p for _, p, _ in rows]))
            above = sum(a for _, _, a in rows)
            misses[key] = {"above": above, "below": len(rows) - rates[key]["hits"] - above}
        truths[cell], gate[cell] = gated_truth_record(null), measured["gate"]
    start = time.perf_counter()
    run_shaped = run_shaped_cells(seeds, replicates)
    run_shaped["seconds"] = round(time.perf_counter() - start, 1)
    columns = ("hit rate a", "hit rate b", "false-alarm rate", "share of documents with positives")
    return {
        "rates": rates,
        "median position of the estimate": positions,
        "misses, truth above / below the interval": misses,
        "truth": truths,
        "gate": gate,
        "run-shaped cells": run_shaped,
        "pipeline method": PAIRED_METHOD,
        "settings": {
            "documents": GATED_DOCUMENTS,
            "min documents (the gate)": MIN_DOCUMENTS,
            "concepts": {
                name: dict(zip(columns, row, strict=True))
                for name, row in zip(GATED_NAMES, GATED_CONCEPTS, strict=True)
            },
            "difficulty sd (common, near the gate)": list(GATED_DIFFICULTY),
            "false-alarm shift sd": GATED_ALARM_SHIFT,
            "truth documents": GATED_TRUTH_CHUNKS * GATED_TRUTH_CHUNK,
            "truth seeds": [10**6, 10**6 + GATED_TRUTH_CHUNKS - 1],
            "cells": list(GATED_CELLS),
            "metrics": list(GATED_METRICS),
        },
    }


# --------------------------------------------------------------------------------------------------
# drivers' Spearman rho (REAP, first-order estimate): which interval method, and the document gate
# --------------------------------------------------------------------------------------------------
RHO_EXPERTS, RHO_DOCUMENTS = 60, 90
#: The planted cases shaped like the drivers run: the spread of the experts' routing rates
#: (log-normal), the shape of their per-document topic affinity (gamma), the share of rarest experts
#: whose saliency is unrelated to their effect, and how saliency follows the effect (``link``).
RHO_CASES = {
    "planted null": {"spread": 1.0, "topic": 1.0, "rare": 0.0, "link": 0.0},
    "rarely routed experts": {"spread": 2.2, "topic": 0.2, "rare": 0.2, "link": 0.5},
}
RHO_STATISTICS = ("REAP, split halves", "estimate, paired", "REAP, paired", "estimate − REAP, paired")
INTERVAL_METHODS = ("percentile", "basic", "BCa")
#: (document gate, cases) cells of the study: the default gate on both cases, a gate of 10 on the rare
#: experts, no gate (every routed expert) on both.
RHO_CELLS = (
    (RHO_MIN_EXPERT_DOCUMENTS, tuple(RHO_CASES)),
    (10, ("rarely routed experts",)),
    (0, tuple(RHO_CASES)),
)


def rho_case(seed: int, spread: float, topic: float, rare: float, link: float) -> tuple:
    """Per-document sums ``[expert, document]`` (exact effect, first-order estimate, REAP saliency,
    routed slots), the tokens per document, and the expected effect, estimate and saliency per expert.

    60 experts, 90 documents of 40–500 tokens. Each expert has a routing rate (log-normal, sd
    ``spread``) and a per-document topic affinity (gamma, shape ``topic``), so the rarest experts are
    routed on a handful of tokens in a few documents. Per document: saliency sums (gamma per routed
    token, mean the expert's saliency per routed token), exact-effect and estimate sums (gamma per routed
    token). The expected effect per corpus token follows the routing rate; the expected saliency per
    routed token follows the effect (``link``) with noise, except for the rarest ``rare`` share, whose
    saliency is unrelated to their tiny effect. The expected scores end with the routing rate (the
    expected routed share's ranking)."""
    rng = np.random.default_rng(seed)
    rate_ = np.exp(spread * rng.normal(size=RHO_EXPERTS))
    rate_ /= rate_.sum()
    effect = rate_ * np.exp(0.3 * rng.normal(size=RHO_EXPERTS))  # per corpus token
    saliency = np.exp(link * np.log(effect) + 0.6 * rng.normal(size=RHO_EXPERTS))  # per routed token
    rarest = np.argsort(rate_)[: int(rare * RHO_EXPERTS)]
    saliency[rarest] = rng.permutation(saliency)[: len(rarest)]
    estimate = np.exp(1.5 * rng.normal(size=RHO_EXPERTS))  # a weak score, per routed token
    tokens = rng.integers(40, 500, RHO_DOCUMENTS).astype(float)
    affinity = rng.gamma(topic, 1 / topic, (RHO_EXPERTS, RHO_DOCUMENTS))
    routed = rng.poisson(tokens * rate_[:, None] * 2 * affinity).astype(float)

    def sums(mean: np.ndarray, shape: float) -> np.ndarray:  # gamma sum over the routed tokens
        return np.where(routed > 0, rng.gamma(np.maximum(routed * shape, 1e-9), mean[:, None] / shape), 0.0)

    per_routed = effect / rate_
    effect_sums = sums(per_routed, 0.25) / 2
    estimate_sums = sums(estimate * per_routed, 0.25) / 2
    saliency_sums = sums(saliency, 2.0)
    truth = (effect, estimate * effect, saliency, rate_)
    return effect_sums, estimate_sums, saliency_sums, routed, tokens, truth


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(scipy.stats.spearmanr(x, y).statistic)


def rho_truths(case: tuple, gate: int) -> dict[str, float]:
    """The true rho of each statistic: Spearman's rho of the expected scores over the experts the
    statistic keeps (routed on at least ``gate`` of the documents behind each of its scores, counted
    here by hand; 0: every routed expert)."""
    _, _, _, routed, _, (effect, estimate, saliency, _) = case
    half = document_split(np.arange(RHO_DOCUMENTS), key=HALVES_KEY)
    split = routed[:, half == 0].sum(1) > 0
    split &= np.count_nonzero(routed[:, half == 0], axis=1) >= gate
    split &= np.count_nonzero(routed[:, half == 1], axis=1) >= gate
    shown = (routed.sum(1) > 0) & (np.count_nonzero(routed, axis=1) >= gate)
    truths = {
        "REAP, split halves": _spearman(saliency[split], effect[split]),
        "estimate, paired": _spearman(estimate[shown], effect[shown]),
        "REAP, paired": _spearman(saliency[shown], effect[shown]),
    }
    truths["estimate − REAP, paired"] = truths["estimate, paired"] - truths["REAP, paired"]
    return truths


def rho_intervals(case: tuple, seed: int, replicates: int, method: str, gate: int) -> dict[str, tuple]:
    """``(estimate, low, high)`` of each statistic: REAP's split-halves rho (``saliency_effect_spearman``,
    each half resampled within itself) and the paired rho of the estimate, of REAP and their difference
    (``paired_rho_difference``, every layer pooled)."""
    effect_sums, estimate_sums, saliency_sums, routed, tokens, _ = case
    common = {"n_resamples": replicates, "seed": seed, "method": method, "min_expert_documents": gate}
    split = saliency_effect_spearman(effect_sums, tokens, saliency_sums, routed, **common)
    paired = paired_rho_difference(
        effect_sums, tokens, estimate_sums, tokens, saliency_sums, routed, **common
    )
    rows = [(split.estimate, split.low, split.high)] + [
        (r["spearman with exact zeroing effect"], r["ci low"], r["ci high"]) for _, r in paired.iterrows()
    ]
    return dict(zip(RHO_STATISTICS, rows, strict=True))


#: The statistics of REAP against its free control (one layer of :data:`RHO_EXPERTS` experts): the
#: selection half's routed share's split-halves ρ and REAP's minus it, paired.
FREQUENCY_STATISTICS = ("routed share, split halves", "REAP − frequency, split halves")


def frequency_truths(case: tuple, gate: int) -> dict[str, float]:
    """The true ρ of :data:`FREQUENCY_STATISTICS` over the split-halves experts: the expected routed
    share ranks as the routing rate."""
    _, _, _, routed, _, (effect, _, saliency, rate_) = case
    half = document_split(np.arange(RHO_DOCUMENTS), key=HALVES_KEY)
    split = routed[:, half == 0].sum(1) > 0
    split &= np.count_nonzero(routed[:, half == 0], axis=1) >= gate
    split &= np.count_nonzero(routed[:, half == 1], axis=1) >= gate
    share = _spearman(rate_[split], effect[split])
    return {
        FREQUENCY_STATISTICS[0]: share,
        FREQUENCY_STATISTICS[1]: _spearman(saliency[split], effect[split]) - share,
    }


def frequency_intervals(case: tuple, seed: int, replicates: int, method: str, gate: int) -> dict[str, tuple]:
    """``(estimate, low, high)`` of :data:`FREQUENCY_STATISTICS` (``saliency_frequency_spearman``)."""
    effect_sums, _, saliency_sums, routed, tokens, _ = case
    found = saliency_frequency_spearman(
        effect_sums,
        tokens,
        saliency_sums,
        routed,
        RHO_EXPERTS,
        n_resamples=replicates,
        seed=seed,
        method=method,
        min_expert_documents=gate,
    )
    rows = [found[name] for name in ("routed share (selection)", "REAP − frequency")]
    return {name: (i.estimate, i.low, i.high) for name, i in zip(FREQUENCY_STATISTICS, rows, strict=True)}


def _hit_and_side(low: float, high: float, truth: float) -> tuple[float, float]:
    """(covered, truth above the interval) as 0/1, both NaN when the interval is unavailable."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return math.nan, math.nan
    return float(low <= truth <= high), float(truth > high)


def _tally(rows: list[tuple[float, float]], seeds: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The coverage rate over the seeds with an interval, and the misses by side with the seeds without."""
    values = np.array(rows, dtype=float).reshape(-1, 2)
    available = int((~np.isnan(values[:, 0])).sum())
    covered, above = int(np.nansum(values[:, 0])), int(np.nansum(values[:, 1]))
    return rate(covered, available, CONFIDENCE), miss_counts(covered, above, available, seeds)


def frequency_coverage(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of the true ρ by the chosen method's interval of :data:`FREQUENCY_STATISTICS` at the
    default gate in each planted case, with the misses' direction (truth above / below the interval)."""
    rates, misses, mean_truth = {}, {}, {}
    gate, method = RHO_MIN_EXPERT_DOCUMENTS, RHO_METHOD
    for case_name in RHO_CASES:
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in FREQUENCY_STATISTICS}
        truths: dict[str, list[float]] = {name: [] for name in FREQUENCY_STATISTICS}
        for seed in range(seeds):
            case = rho_case(seed, **RHO_CASES[case_name])
            truth = frequency_truths(case, gate)
            for name, (_, low, high) in frequency_intervals(case, seed, replicates, method, gate).items():
                rows[name].append(_hit_and_side(low, high, truth[name]))
                truths[name].append(truth[name])
        for name, found in rows.items():
            key = f"{case_name}, gate {gate}, {method}, {name}"
            rates[key], misses[key] = _tally(found, seeds)
            mean_truth[key] = float(np.mean(truths[name]))
    return {"rates": rates, "misses, truth above / below the interval": misses, "mean truth": mean_truth}


def rho_interval_methods(seeds: int, replicates: int) -> dict[str, Any]:
    """Coverage of the true rho, and the median position of the estimate in its interval, of the
    percentile, basic and BCa document intervals of the drivers' four rho statistics, in each cell of
    :data:`RHO_CELLS` (document gate × planted case), and how many misses have the truth above the
    interval (it understates ρ) and below it."""
    rates, positions, misses, mean_truth = {}, {}, {}, {}
    for gate, cases in RHO_CELLS:
        for case_name in cases:
            planted = [rho_case(seed, **RHO_CASES[case_name]) for seed in range(seeds)]
            truths = [rho_truths(case, gate) for case in planted]
            for method in INTERVAL_METHODS:
                hits = {statistic: [] for statistic in RHO_STATISTICS}
                for seed, (case, truth) in enumerate(zip(planted, truths, strict=True)):
                    for statistic, (value, low, high) in rho_intervals(
                        case, seed, replicates, method, gate
                    ).items():
                        position = (value - low) / (high - low) if high > low else math.nan
                        hits[statistic].append((*_hit_and_side(low, high, truth[statistic]), position))
                for statistic, rows in hits.items():
                    key = f"{case_name}, gate {gate}, {method}, {statistic}"
                    rates[key], misses[key] = _tally([(c, a) for c, a, _ in rows], seeds)
                    positions[key] = float(np.nanmedian([p for _, _, p in rows]))
                    mean_truth[key] = float(np.mean([truth[statistic] for truth in truths]))
    return {
        "rates": rates,
        "median position of the estimate": positions,
        "misses, truth above / below the interval": misses,
        "mean truth": mean_truth,
        "REAP vs routing frequency": frequency_coverage(seeds, replicates),
        "settings": {
            "experts": RHO_EXPERTS,
            "documents": RHO_DOCUMENTS,
            "cases": RHO_CASES,
            "cells": [{"gate": gate, "cases": list(cases)} for gate, cases in RHO_CELLS],
            "chosen method": RHO_METHOD,
            "default gate": RHO_MIN_EXPERT_DOCUMENTS,
            "statistics": list(RHO_STATISTICS),
        },
    }


# --------------------------------------------------------------------------------------------------
# specialization: the excess's document-bootstrap interval away from zero
# --------------------------------------------------------------------------------------------------
#: Per layer of the planted stream, the share of tokens whose first slot goes to the expert of their own
#: group (the others by their document's routing preference): the planted specialization of that layer.
EXCESS_STRENGTHS = (0.1, 0.25, 0.5)
#: Documents of the large simulation that checks the truth computed by hand, and the Dirichlet
#: concentration of every document's content and routing preference (the clumping the permutation null
#: keeps).
EXCESS_LARGE_DOCUMENTS, EXCESS_CLUMPING = 10_000, 0.3
#: Permutations of the large simulation (its null mean is about 0 at that size).
EXCESS_LARGE_PERMUTATIONS = 4


@dataclass(frozen=True)
class ExcessShape:
    """The shape of a planted specialization stream: documents, token groups, experts, routed slots per
    token (1 or 2), the planted strength of each layer, and the share of the study's seeds it runs (the
    run-shaped stream costs about 20 times the small one per seed)."""

    documents: int
    groups: int
    experts: int
    slots: int
    strengths: tuple[float, ...] = EXCESS_STRENGTHS
    seed_share: float = 1.0


#: The regimes of the excess study: the run's shape (docs/results/toy_default.json: 223 documents, 50
#: token clusters, 16 experts, top-2; strength 0.5 gives a true excess of 0.065 bits, the toy's last
#: layer measures 0.066) and a small stream (60 documents, 8 groups = experts, one slot).
EXCESS_REGIMES = {
    "run shape": ExcessShape(223, 50, 16, 2, (0.25, 0.5, 0.75), seed_share=1 / 3),
    "small": ExcessShape(60, 8, 8, 1),
}
#: The small regime, the default of the stream's helpers.
EXCESS_SMALL = EXCESS_REGIMES["small"]


def categorical(rng: np.random.Generator, probabilities: Float[np.ndarray, "n k"]) -> Int[np.ndarray, " n"]:
    """One draw per row of ``probabilities`` (each row a distribution over ``k`` outcomes)."""
    drawn = (rng.random(len(probabilities))[:, None] > probabilities.cumsum(1)).sum(1)
    return np.minimum(drawn, probabilities.shape[1] - 1)


def specialization_stream(
    seed: int, n_docs: int | None = None, shape: ExcessShape = EXCESS_SMALL
) -> tuple[Int[torch.Tensor, "token layer slot"], Int[torch.Tensor, " token"], Int[torch.Tensor, " token"]]:
    """Routing ``[token, layer, slot]``, group and document of every token of ``n_docs`` (default the
    shape's) documents of 60–199 tokens: each document's content is clumped (Dirichlet over the groups)
    and so is its routing preference (Dirichlet over the experts, one per layer); in layer ``l`` a
    token's first slot goes to the expert of its own group (group ``g`` → expert ``g mod experts``)
    with probability ``shape.strengths[l]``, else to an expert drawn from its document's preference. A
    second slot (``shape.slots == 2``) is the first one shifted by ``1 + offset`` (mod experts), the
    offset drawn from a second clumped preference of the document over the ``experts − 1`` offsets."""
    rng = np.random.default_rng(seed)
    n_docs = shape.documents if n_docs is None else n_docs
    n_experts = shape.experts
    doc = np.repeat(np.arange(n_docs), rng.integers(60, 200, n_docs))
    content = categorical(rng, rng.dirichlet(np.full(shape.groups, EXCESS_CLUMPING), n_docs)[doc])
    routed = np.empty((len(doc), len(shape.strengths), shape.slots), dtype=np.int64)
    for layer, strength in enumerate(shape.strengths):
        preferred = categorical(rng, rng.dirichlet(np.full(n_experts, EXCESS_CLUMPING), n_docs)[doc])
        routed[:, layer, 0] = np.where(rng.random(len(doc)) < strength, content % n_experts, preferred)
        if shape.slots == 2:
            offset = categorical(rng, rng.dirichlet(np.full(n_experts - 1, EXCESS_CLUMPING), n_docs)[doc])
            routed[:, layer, 1] = (routed[:, layer, 0] + 1 + offset) % n_experts
    return torch.from_numpy(routed), torch.from_numpy(content), torch.from_numpy(doc)


def excess_truth(strength: float, shape: ExcessShape = EXCESS_SMALL) -> float:
    """The layer's true excess, by hand: on infinitely many documents the permutation null's JSD is 0
    and every expert's JSD is that of its population distribution over groups. Contents and preferences
    are symmetric Dirichlet draws independent of each other, so a token's group is uniform and its first
    slot takes expert ``e`` with P(e | g) = a(e, g) = strength · [e = g mod experts] + (1 − strength) /
    experts; a second slot is the first shifted by an offset uniform on average over the others, so it
    takes ``e`` with (1 − a(e, g)) / (experts − 1). Expert ``e``'s routed tokens have groups
    distributed as its row of those rates, against the pool (uniform); the token-weighted mean over
    experts of their JSDs (bits, scipy's) is the truth. One slot and groups = experts: the JSD of
    ``strength · δ + (1 − strength) · uniform`` against uniform."""
    groups = np.arange(shape.groups)
    rates = np.full((shape.experts, shape.groups), (1 - strength) / shape.experts)
    rates[groups % shape.experts, groups] += strength
    if shape.slots == 2:
        rates = rates + (1 - rates) / (shape.experts - 1)
    tokens = rates.sum(1)
    pool = rates.sum(0) / rates.sum()
    jsd = [
        scipy.spatial.distance.jensenshannon(row / n, pool, base=2) ** 2
        for row, n in zip(rates, tokens, strict=True)
    ]
    return float(np.dot(tokens, jsd) / tokens.sum())


def planted_excess(
    seed: int,
    n_docs: int | None = None,
    n_permutations: int = BOOTSTRAP_PERMUTATIONS,
    shape: ExcessShape = EXCESS_SMALL,
):
    """The document-permutation baseline of the planted stream (by default with the
    ``BOOTSTRAP_PERMUTATIONS`` permutations the excess and its interval use)."""
    routed, content, doc = specialization_stream(seed, n_docs, shape)
    return document_permutation_baseline(
        routed, content, doc, shape.experts, shape.groups, n_permutations=n_permutations, seed=seed
    )


def excess_interval_coverage(seeds: int, replicates: int) -> dict[str, Any]:
    """Per regime of :data:`EXCESS_REGIMES` (the run's shape, the small stream), coverage of each layer's
    true excess (:func:`excess_truth`) by the pipeline's interval (``excess_intervals``) and by the
    basic and BCa intervals of the same statistic and resamples (``cluster_bootstrap`` of
    ``excess_statistic``, same seed), the median position of the estimate in each interval, how many
    misses have the truth below the interval (an interval that overstates the excess), the estimates'
    mean and sd over seeds and the mean bootstrap bias; the truth is checked on one stream of
    ``EXCESS_LARGE_DOCUMENTS`` documents."""
    return {
        "regimes": {
            name: excess_regime(shape, max(2, round(seeds * shape.seed_share)), replicates)
            for name, shape in EXCESS_REGIMES.items()
        }
    }


def excess_regime(shape: ExcessShape, seeds: int, replicates: int) -> dict[str, Any]:
    """One regime of :func:`excess_interval_coverage`."""
    min_n = SpecializationConfig().min_expert_tokens
    truths = [excess_truth(strength, shape) for strength in shape.strengths]
    labels = [f"planted strength {strength:g}" for strength in shape.strengths]
    large = planted_excess(10**6, EXCESS_LARGE_DOCUMENTS, EXCESS_LARGE_PERMUTATIONS, shape).layer_summary(
        min_n
    )
    large_excess = large["permutation_excess"].to_numpy()
    covered = {(m, label): 0 for m in INTERVAL_METHODS for label in labels}
    below = dict.fromkeys(covered, 0)  # misses with the truth below the interval (it overstates)
    position = {key: [] for key in covered}
    estimates, bias, pipeline_method = [], [], set()
    for seed in range(seeds):
        baseline = planted_excess(seed, shape=shape)
        pipeline = excess_intervals(baseline, min_n=min_n, n_resamples=replicates, seed=seed)
        pipeline_method |= set(pipeline["method"])
        statistic = excess_statistic(baseline, min_n)
        estimates.append(pipeline["estimate"].to_numpy())
        bias.append(pipeline["bootstrap_bias"].to_numpy())
        for method in INTERVAL_METHODS:
            if method == pipeline["method"].iloc[0]:  # the pipeline's own interval
                rows = list(zip(pipeline["estimate"], pipeline["ci_low"], pipeline["ci_high"], strict=True))
            else:
                intervals = cluster_bootstrap(
                    statistic, baseline.n_documents, n_resamples=replicates, method=method, seed=seed
                )
                rows = [(i.estimate, i.low, i.high) for i in intervals]
            for label, truth, (value, low, high) in zip(labels, truths, rows, strict=True):
                covered[method, label] += bool(low <= truth <= high)
                below[method, label] += bool(truth < low)
                position[method, label].append((value - low) / (high - low))
    estimates, bias = np.array(estimates), np.array(bias)
    return {
        "seeds": seeds,
        "rates": {f"{m}, {label}": rate(hits, seeds, CONFIDENCE) for (m, label), hits in covered.items()},
        "median position of the estimate": {
            f"{m}, {label}": float(np.median(p)) for (m, label), p in position.items()
        },
        "misses with the truth below the interval": {f"{m}, {label}": n for (m, label), n in below.items()},
        "truth": dict(zip(labels, truths, strict=True)),
        "large simulation": dict(zip(labels, map(float, large_excess), strict=True)),
        "mean estimate": dict(zip(labels, map(float, estimates.mean(0)), strict=True)),
        "sd of the estimate": dict(
            zip(labels, map(float, estimates.std(0, ddof=min(1, seeds - 1))), strict=True)
        ),
        "mean bootstrap bias": dict(zip(labels, map(float, bias.mean(0)), strict=True)),
        "pipeline method": sorted(pipeline_method),
        "settings": {
            "documents": shape.documents,
            "groups": shape.groups,
            "experts": shape.experts,
            "slots": shape.slots,
            "tokens per document": [60, 199],
            "clumping (Dirichlet concentration)": EXCESS_CLUMPING,
            "permutations behind the null mean": BOOTSTRAP_PERMUTATIONS,
            "min expert tokens": min_n,
            "large simulation": {
                "documents": EXCESS_LARGE_DOCUMENTS,
                "permutations": EXCESS_LARGE_PERMUTATIONS,
                "seed": 10**6,
            },
        },
    }


STUDIES = (
    Study(
        "label_mean_interval_coverage",
        "mean label scores (balanced accuracy, F1, recall): percentile, basic and BCa document intervals on planted scores with a known true mean, at the earlier model's shape and the run's",
        "tests/test_label_interval_coverage.py",
        200,
        999,
        label_mean_interval_coverage,
    ),
    Study(
        "explain_share_null",
        "share of experts beating their shuffled control: percentile interval on exchangeable labels",
        "tests/test_explain_document_units.py",
        300,
        500,
        explain_share_null,
    ),
    Study(
        "explain_auc_null",
        "mean AUC: BCa document interval on a planted AUC of 0.5",
        "tests/test_explain_document_units.py",
        300,
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
        "driver_domain_rho",
        "Spearman rho of domain score vs removal effect: document interval at a planted null and away from it",
        "tests/test_driver_domain.py",
        200,
        200,
        driver_domain_rho,
    ),
    Study(
        "driver_holm_null",
        "drivers' re-weighting Holm over 5 domains with no true gain, one-draw path (documents-only bootstrap): family-wise rates",
        "tests/test_driver_statistics.py",
        400,
        400,
        driver_holm_null,
    ),
    Study(
        "within_layer_rho_null",
        "first-order estimate that ranks layers only: the mean within-layer rho's interval",
        "tests/test_driver_statistics.py",
        300,
        200,
        within_layer_rho_null,
    ),
    Study(
        "rho_interval_methods",
        "drivers' REAP and first-order-estimate rho: percentile, basic and BCa coverage, with and without the document gate",
        "tests/test_rho_interval_coverage.py",
        200,
        300,
        rho_interval_methods,
    ),
    Study(
        "excess_interval_coverage",
        "specialization excess away from zero: the pipeline's percentile interval vs basic and BCa",
        "tests/test_specialization_permutation.py",
        300,
        500,
        excess_interval_coverage,
    ),
    Study(
        "interval_method_coverage",
        "paired held-out difference with rare concepts: percentile, BCa and basic coverage",
        "tests/test_interval_method_coverage.py",
        300,
        999,
        interval_method_coverage,
    ),
    Study(
        "gated_interval_method_coverage",
        "paired held-out difference at the run's shape with the per-concept gate: percentile, basic and BCa coverage in balanced accuracy and F1; the pipeline's interval with the near-gate concepts in one shared subset and arm-specific noise",
        "tests/test_gated_interval_coverage.py",
        1000,
        999,
        gated_interval_method_coverage,
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
        rerun = ["--only", study.name, "--out", f"{study.name}.json"]
        rerun += ["--scale", f"{scale:g}"] if scale != 1.0 else []
        studies[study.name]["command"] = command(rerun)
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

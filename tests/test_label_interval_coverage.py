"""Coverage of the label scores' document intervals on planted scores with a known true mean.

The planted structure mimics the explain analysis: 50 experts, 58 score documents of 7 domains, each
expert scored on a fixed number of positives (20; 6 for a few experts) and 20 negatives. An expert's
positives come mostly from documents of its home domain and, within a domain, from documents where it
is routed more (a per-document intensity exp(0.8 u_d)); its label is right more often in those same
documents (logit with a home bonus and + s u_d for positives, - s u_d for negatives). The true metric of an
expert is that of the document population (expected counts over domains and u, by Gauss-Hermite
quadrature): the limit of its score over ever more documents.
"""

from __future__ import annotations

import numpy as np

from tl_moe.explain.document_bootstrap import MEAN_METHOD, document_intervals
from tl_moe.explain.scorers import Score

DOMAINS, DOCUMENTS, EXPERTS, NEGATIVES, GAMMA, HOME_SHARE = 7, 58, 50, 20, 0.8, 0.85


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _experts():
    rng = np.random.default_rng(12345)
    return {
        "home": rng.integers(0, DOMAINS, EXPERTS),
        "positives": np.where(np.arange(EXPERTS) < 6, 6, 20),
        "recall": rng.normal(0.8, 1.0, EXPERTS),  # logit of a right answer on a positive, away from home
        "recall_home": rng.uniform(0.5, 2.0, EXPERTS),
        "false": rng.normal(-2.0, 0.8, EXPERTS),  # logit of a yes on a negative, away from home
        "false_home": rng.uniform(0.0, 1.5, EXPERTS),
        "slope": rng.uniform(0.3, 1.2, EXPERTS),
    }


def _rates(x, domain, u):
    """Per expert (rows) and document (columns): positive intensity, P(yes | positive), P(yes | negative)."""
    home = x["home"][:, None] == domain
    share = np.where(home, HOME_SHARE * DOMAINS, (1 - HOME_SHARE) * DOMAINS / (DOMAINS - 1))
    intensity = share * np.exp(GAMMA * u - GAMMA**2 / 2)
    hit = _sigmoid(x["recall"][:, None] + x["recall_home"][:, None] * home + x["slope"][:, None] * u)
    false = _sigmoid(x["false"][:, None] + x["false_home"][:, None] * home - x["slope"][:, None] * u)
    return intensity, hit, false


def _true_counts(x) -> tuple[np.ndarray, ...]:
    """Each expert's expected true positives, false negatives, false positives, true negatives over the
    document population (its positives drawn in proportion to the routing intensity)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    hits = mass = false = 0.0
    for domain in range(DOMAINS):  # domains equally likely
        intensity, hit, no = _rates(x, domain, np.broadcast_to(nodes, (EXPERTS, len(nodes))))
        hits, mass = hits + (intensity * hit) @ weights, mass + intensity @ weights
        false = false + no @ weights / DOMAINS
    recall = hits / mass
    return x["positives"] * recall, x["positives"] * (1 - recall), NEGATIVES * false, NEGATIVES * (1 - false)


def _true_mean(metric: str) -> float:
    tp, fn, fp, tn = _true_counts(_experts())
    value = {"balanced_accuracy": (tp / (tp + fn) + tn / (tn + fp)) / 2, "precision": tp / (tp + fp)}[metric]
    return float(value.mean())


def _planted_scores(x, seed: int) -> dict[tuple[int, int], Score]:
    rng = np.random.default_rng(seed)
    domain, u = rng.integers(0, DOMAINS, DOCUMENTS), rng.normal(0, 1, DOCUMENTS)
    intensity, hit, false = _rates(x, domain[None, :], u[None, :])
    scores = {}
    for e in range(EXPERTS):
        docs = np.concatenate([rng.choice(DOCUMENTS, x["positives"][e], p=intensity[e] / intensity[e].sum()),
                               rng.integers(0, DOCUMENTS, NEGATIVES)])  # fmt: skip
        truth = np.arange(len(docs)) < x["positives"][e]
        yes = rng.random(len(docs)) < np.where(truth, hit[e, docs], false[e, docs])
        scores[(0, e)] = Score(0, e, "concept", "own", (0, e), truth=tuple(truth.astype(int)),
                               predicted=tuple(yes.astype(int)), documents=tuple(docs.tolist()))  # fmt: skip
    return scores


def _balanced_accuracy(score: Score) -> float:
    y, p = np.asarray(score.truth, bool), np.asarray(score.predicted, bool)
    return (p[y].mean() + (~p[~y]).mean()) / 2


def test_mean_interval_covers_the_true_mean_with_its_estimate_mid_interval():
    """Over 200 planted corpora: the BCa interval of the mean balanced accuracy (MEAN_METHOD) covers the
    true mean more often than the percentile interval of the same resamples and with its estimate
    mid-interval, where the percentile interval leaves the estimate high (its resamples lean low).
    Measured: BCa 0.915 with the estimate at a median 0.47 of the interval, percentile 0.885 at 0.60
    (basic 0.920 at 0.40). The rest of the gap to 0.95 is the estimator's own small-sample bias (the
    mean of per-expert ratios over clustered documents sits about 0.4 standard errors below the truth),
    which no interval around the estimate removes."""
    assert MEAN_METHOD == "BCa"
    x, truth = _experts(), _true_mean("balanced_accuracy")
    covered, position = {"percentile": [], "BCa": []}, {"percentile": [], "BCa": []}
    for seed in range(200):
        scores = _planted_scores(x, seed)
        for method in covered:
            row = document_intervals(list(scores), scores, {}, "balanced_accuracy", n_resamples=999,
                                     seed=seed, mean_method=method)  # fmt: skip
            low, high = row["ci low"], row["ci high"]
            covered[method].append(low <= truth <= high)
            position[method].append((row["mean"] - low) / (high - low))
        assert row["mean"] == np.mean([_balanced_accuracy(s) for s in scores.values()])
    assert np.mean(covered["BCa"]) >= 0.90
    assert np.mean(covered["BCa"]) >= np.mean(covered["percentile"]) + 0.02
    assert 0.4 <= np.median(position["BCa"]) <= 0.6
    assert np.median(position["percentile"]) >= 0.57


def test_precision_interval_holds_the_class_sizes_and_covers_the_true_mean():
    """Precision moves with the share of positives among the items, which the scorer fixes; each resample
    holds every expert's class sizes, so the interval neither widens nor leans with that share. Over 200
    planted corpora the BCa interval covers the true mean precision at about the nominal rate with its
    estimate mid-interval (measured: 0.955, median position 0.59; with the class sizes left free, as
    the plain document resample does, the same corpora gave intervals nearly twice as wide with the
    percentile estimate at 0.67)."""
    x, truth = _experts(), _true_mean("precision")
    covered, position = [], []
    for seed in range(200):
        scores = _planted_scores(x, seed)
        row = document_intervals(list(scores), scores, {}, "precision", n_resamples=999, seed=seed)
        covered.append(row["ci low"] <= truth <= row["ci high"])
        position.append((row["mean"] - row["ci low"]) / (row["ci high"] - row["ci low"]))
    assert np.mean(covered) >= 0.92
    assert 0.35 <= np.median(position) <= 0.65


def test_the_summary_row_and_its_finding_name_the_interval_methods():
    from tl_moe.pipeline.results.explain_findings import _unit

    scores = _planted_scores(_experts(), 0)
    row = document_intervals(list(scores), scores, {"shuffled": scores}, "balanced_accuracy", n_resamples=99)
    assert (row["mean interval method"], row["difference interval method"]) == ("BCa", "percentile")
    row["interval over"] = "score documents"
    assert _unit(row).endswith(
        "58 score documents of the scoring items (BCa for the means, percentile for the differences)"
    )
    del row["mean interval method"]  # a results file written before the methods were recorded
    assert _unit(row).endswith("58 score documents of the scoring items")

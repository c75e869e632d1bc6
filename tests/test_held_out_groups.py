"""Held-out differences per concept group: each group's concepts and test documents with positives,
and no interval for a group whose positives sit in fewer than the minimum of test documents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tl_moe.analysis.held_out_probing import TN, TP, HeldOutArm, balanced_f1
from tl_moe.analysis.stats import MIN_DOCUMENTS

N_DOCS = 60
# Two code concepts with positives in every document; one text concept with positives in 12 documents.
CONCEPTS = ("code_keyword", "code_identifier", "text_capitalized_word")


def _arm(name: str, hit: float, seed: int) -> HeldOutArm:
    rng = np.random.default_rng(seed)
    counts = np.zeros((1, len(CONCEPTS), N_DOCS, 4))
    for c in range(len(CONCEPTS)):
        positives = rng.poisson(15, N_DOCS)
        if c == 2:
            positives[12:] = 0
        negatives = rng.poisson(40, N_DOCS)
        tp, fp = rng.binomial(positives, hit), rng.binomial(negatives, 0.1)
        counts[0, c, :, TP], counts[0, c, :, 1] = tp, positives - tp
        counts[0, c, :, 2], counts[0, c, :, TN] = fp, negatives - fp
    return HeldOutArm(name, pd.DataFrame(), pd.DataFrame(), counts, CONCEPTS, (1,), np.arange(N_DOCS))


def test_each_group_is_compared_over_its_own_concepts_and_a_rare_group_gets_no_interval():
    from tl_moe.pipeline.sections.probing import concept_group, group_comparisons

    assert concept_group("code_keyword") == "code" and concept_group("pos_NOUN") == "pos"
    assert concept_group("not_a_library_concept") == "other"
    arms = {"moe": _arm("moe", 0.9, 0), "dense": _arm("dense", 0.6, 1)}
    records = group_comparisons(arms, n_resamples=300, seed=0, min_clusters=MIN_DOCUMENTS)
    f1 = {r["group"]: r for r in records if r["metric"] == "f1"}
    assert set(f1) == {"code", "text"} and {r["comparison"] for r in records} == {"moe_vs_dense"}
    code, text = f1["code"], f1["text"]
    assert code["n_concepts"] == 2 and code["n_documents_with_positives"] == N_DOCS
    expected = (
        balanced_f1(arms["moe"].doc_counts[0, :2].sum(1))
        - balanced_f1(arms["dense"].doc_counts[0, :2].sum(1))
    ).mean()
    assert code["estimate"] == pytest.approx(expected)
    assert code["interval_available"] and code["ci_low"] > 0  # a planted gain of 0.9 vs 0.6 recall
    # The text group: positives in 12 test documents (< 30): the estimate, no interval, the reason.
    assert text["n_concepts"] == 1 and text["n_documents_with_positives"] == 12
    assert text["estimate"] is not None and not text["interval_available"] and text["ci_low"] is None
    assert "12 test document(s) hold a positive" in text["interval_unavailable_reason"]


def test_the_readme_group_table_shows_counts_and_no_interval_for_a_rare_group():
    from tl_moe.pipeline.readme_results import _group_table
    from tl_moe.pipeline.sections.probing import group_comparisons

    arms = {"moe": _arm("moe", 0.9, 0), "dense": _arm("dense", 0.6, 1)}
    records = group_comparisons(arms, n_resamples=300, seed=0, min_clusters=MIN_DOCUMENTS)
    lines = _group_table(records)
    code = next(line for line in lines if line.startswith("| code |"))
    text = next(line for line in lines if line.startswith("| text |"))
    f1 = {r["group"]: r for r in records if r["metric"] == "f1"}
    assert code.startswith(f"| code | 2 | {N_DOCS} | {f1['code']['estimate']:+.3f} [")
    assert text == f"| text | 1 | 12 | {f1['text']['estimate']:+.3f} (no interval) |"

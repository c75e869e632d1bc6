"""Held-out differences per concept group: each group's concepts and test documents with positives; a
concept whose positives sit in fewer than the minimum of test documents is dropped by the per-concept
gate, with the reason, and a group left without concepts has no estimate."""

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
    # The text concept: positives in 12 test documents (< 30): dropped by the gate, the group has no
    # estimate, and the record names the concept and why.
    assert text["n_concepts"] == 0 and text["n_concepts_dropped"] == 1 and text["estimate"] is None
    assert not text["interval_available"] and text["ci_low"] is None
    assert text["dropped_concepts"] == (
        f"text_capitalized_word: positives in 12 test documents in moe (at least {MIN_DOCUMENTS} needed)"
    )
    # The text group leads the records.
    assert records[0]["group"] == "text"


def test_the_readme_group_table_shows_kept_and_dropped_counts_and_no_estimate_for_a_gated_group():
    from tl_moe.pipeline.readme_results import _group_table
    from tl_moe.pipeline.sections.probing import group_comparisons

    arms = {"moe": _arm("moe", 0.9, 0), "dense": _arm("dense", 0.6, 1)}
    records = group_comparisons(arms, n_resamples=300, seed=0, min_clusters=MIN_DOCUMENTS)
    lines = _group_table(records, "f1")
    code = next(line for line in lines if line.startswith("| code |"))
    text = next(line for line in lines if line.startswith("| text |"))
    f1 = {r["group"]: r for r in records if r["metric"] == "f1"}
    assert code.startswith(f"| code | 2 | 0 | {N_DOCS} | {f1['code']['estimate']:+.3f} [")
    assert text == "| text | 0 | 1 | 0 | – |"
    assert lines.index(text) < lines.index(code)  # text leads

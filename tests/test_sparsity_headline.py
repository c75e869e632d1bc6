"""The sparsity family's findings: the routed-token control is the headline, the size confound stated."""

from __future__ import annotations

import pandas as pd


def _family_record(model: str, ratio: float, comparison: str, estimate: float, low: float, high: float):
    return {
        "protocol": "held_out",
        "comparison": comparison,
        "k": 1,
        "metric": "f1",
        "estimate": estimate,
        "ci_low": low,
        "ci_high": high,
        "interval_available": True,
        "model": model,
        "active_ratio": ratio,
        "experts": int(2 / ratio),
    }


def test_the_sparsity_headline_is_the_routed_token_control_and_states_the_size_confound():
    """Planted: on routing-matched subsets both members look better; on routed tokens one is worse
    (a reversal) and one is not separated from 0 — the headline reports the controlled results."""
    from tl_moe.pipeline.sections.sparsity import SparsityResult

    held = pd.DataFrame(
        [
            _family_record("toy/moe-4x2", 0.5, "moe_vs_matched_subsets", 0.036, 0.022, 0.051),
            _family_record("toy/moe-4x2", 0.5, "moe_vs_dense_on_routed_tokens", -0.027, -0.053, -0.016),
            _family_record("toy/moe-32x2", 0.0625, "moe_vs_matched_subsets", 0.086, 0.062, 0.136),
            _family_record("toy/moe-32x2", 0.0625, "moe_vs_dense_on_routed_tokens", 0.005, -0.008, 0.024),
        ]
    )
    table = pd.DataFrame({"k": [1, 1], "mean_best_f1": [0.8, 0.9], "active_ratio": [0.5, 0.0625]})
    result = SparsityResult(
        table=table,
        ks=(1,),
        held_out=held,
        parameters={"toy/moe-4x2": 1_577_088, "toy/moe-32x2": 7_096_448},
    )
    headline, paper, confound = result.findings()
    assert "exactly the tokens routed" in headline and "held-out" in headline
    # Members in order of active ratio, each routed-token result first, matched subsets beside it.
    assert headline.index(
        "moe-32x2 (0.0625): +0.005 [-0.008, +0.024] (matched subsets +0.086"
    ) < headline.index("moe-4x2 (0.5): -0.027 [-0.053, -0.016] (matched subsets +0.036")
    assert "moe-4x2 (0.5): above 0 on matched subsets, below 0 on routed tokens" in headline
    assert "moe-32x2 (0.0625): above 0 on matched subsets, not separated from 0 on routed tokens" in headline
    assert (
        "better than dense neurons in 0 member(s), worse in 1, and are not separated from them in 1"
        in headline
    )
    assert "paper's protocol" in paper
    assert "moe-4x2 1.58 M" in confound and "moe-32x2 7.10 M" in confound
    assert "cannot separate routing sparsity from model size" in confound
    assert result.records()["parameters"]["toy/moe-32x2"] == 7_096_448


def test_a_control_that_agrees_leaves_the_conclusion_unchanged():
    from tl_moe.pipeline.sections.sparsity import SparsityResult

    held = pd.DataFrame(
        [
            _family_record("toy/moe-8x2", 0.25, "moe_vs_matched_subsets", 0.06, 0.05, 0.1),
            _family_record("toy/moe-8x2", 0.25, "moe_vs_dense_on_routed_tokens", 0.04, 0.01, 0.07),
        ]
    )
    table = pd.DataFrame({"k": [1], "mean_best_f1": [0.8], "active_ratio": [0.25]})
    (headline, _) = SparsityResult(table=table, ks=(1,), held_out=held).findings()
    assert "changes the conclusion" not in headline
    assert "better than dense neurons in 1 member(s), worse in 0" in headline

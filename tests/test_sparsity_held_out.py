"""The sparsity family under the held-out protocol, on planted MoEs whose answer is known.

Two planted MoEs (4 and 8 experts, top-2) compute exactly one dense model's function (every expert a
copy of its FFN, renormalized routing), so each expert's neurons on its routed tokens ARE the dense
neurons on those tokens: for every member the "dense on routed tokens" control must be 0 with an
interval covering 0, whatever the active ratio.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from planted_models import dense_copy_pair  # noqa: E402


@pytest.fixture(scope="module")
def family_result(tmp_path_factory):
    import tl_moe
    from tl_moe.pipeline import RunOptions, run
    from tl_moe.pipeline.sections.probing import Probing
    from tl_moe.pipeline.sections.sparsity import Sparsity

    class PlantedFamily(Sparsity):
        def family(self, run_context):
            return ["moe8"]

    directory = tmp_path_factory.mktemp("planted_family")
    moe_dir, dense_dir = dense_copy_pair(directory / "four")
    moe8_dir, _ = dense_copy_pair(directory / "eight", num_experts=8)
    models = {
        "moe": tl_moe.load(moe_dir, device="cpu"),
        "moe8": tl_moe.load(moe8_dir, device="cpu"),
        "dense": tl_moe.load(dense_dir, device="cpu"),
    }
    ids = models["moe"].tokenizer("x = [1, 2, 3]", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (models["moe8"](ids) - models["dense"](ids)).abs().max() < 1e-4
    options = RunOptions(
        model="moe",
        dense_baseline="dense",
        max_tokens=8_000,
        batch_size=8,
        probe_ks=(1, 4),
        min_examples=20,
        held_out_min_examples=20,
        min_documents=10,  # a small planted run (~23 test documents) whose answer is known
        bootstrap_resamples=500,
        skip_untrained_null=True,
        progress=False,
    )
    return run(options, analyses=[Probing(), PlantedFamily()], models=models, write_report=False)


def test_every_member_gets_held_out_records_with_its_active_ratio(family_result):
    held = family_result["sparsity"].held_out
    assert set(held["model"]) == {"moe", "moe8"}
    assert dict(zip(held["model"], held["active_ratio"], strict=False)) == {"moe": 0.5, "moe8": 0.25}
    from tl_moe.analysis.sparsity_family import FAMILY_COMPARISONS

    for model in ("moe", "moe8"):
        rows = held[(held["model"] == model) & (held["metric"] == "f1")]
        assert set(zip(rows["comparison"], rows["k"], strict=True)) == {
            (c, k) for c in FAMILY_COMPARISONS for k in (1, 4)
        }
        # The per-concept gate keeps concepts with positives and negatives in 30 test documents.
        assert rows["interval_available"].all() and (rows["n_concepts"] >= 3).all()
        assert (rows["n_concepts"] + rows["n_concepts_dropped"] == rows["n_concepts_selected"]).all()
    records = family_result["sparsity"].records()["comparisons"]
    assert {"protocol", "comparison", "k", "estimate", "ci_low", "ci_high", "n_concepts", "model"} <= set(
        records[0]
    )


def test_the_analyzed_model_reuses_the_probing_sections_numbers(family_result):
    held = family_result["sparsity"].held_out
    probing = family_result["probing"]
    for record in held[held["model"] == "moe"].to_dict("records"):
        same = probing.comparison("held_out", record["comparison"], record["k"], record["metric"])
        assert record["estimate"] == same["estimate"] and record["ci_low"] == same["ci_low"]


def test_the_routed_token_control_is_zero_for_every_member_of_a_planted_family(family_result):
    held = family_result["sparsity"].held_out
    routed = held[
        held["comparison"].isin(
            ["moe_vs_dense_on_routed_tokens", "moe_vs_dense_on_routed_tokens_matched_count"]
        )
        & (held["metric"] == "f1")
    ]
    # Both routed-token controls (d_expert = d_mlp here: the matched count's one draw is every neuron).
    assert len(routed) == 8
    for record in routed.to_dict("records"):
        assert abs(record["estimate"]) <= 0.01, record
        assert record["ci_low"] <= 0.0 <= record["ci_high"], record
        assert record["ci_high"] - record["ci_low"] <= 0.02, record
    # Every member carries the headline control's own permuted-label null, and the headline tests.
    null = held[(held["comparison"] == "permuted_labels_on_routed_tokens") & (held["metric"] == "f1")]
    assert set(zip(null["model"], null["k"], strict=True)) == {
        (m, k) for m in ("moe", "moe8") for k in (1, 4)
    }
    tests = family_result["sparsity"].headline_tests()
    assert len(tests) == 4 and {t["verdict"] for t in tests} == {"not separated from 0"}
    # The headline's p-values are the document swap test's, with at least SWAP_PERMUTATIONS swaps.
    from tl_moe.analysis.held_out_probing import SWAP_PERMUTATIONS

    assert {t["p_test"] for t in tests} == {"swap"}
    assert all(t["swap_permutations"] >= SWAP_PERMUTATIONS for t in tests)


def test_the_figures_keep_the_paper_curve_and_add_the_held_out_differences(family_result):
    result = family_result["sparsity"]
    names = [item.name for item in result.figures()]
    assert names == ["probing_f1_vs_sparsity", "probing_held_out_vs_sparsity"]
    assert all(name.startswith(("paper protocol | ", "held-out | ")) for name in result.metrics())
    assert result.table.set_index("model").loc["moe8", "experts"].iloc[0] == 8

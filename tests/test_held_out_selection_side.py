"""Held-out probing chooses on selection documents only: planted concepts whose positives sit on one side."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.held_out_probing import compare, dense_layer_blocks, held_out_arm
from tl_moe.analysis.splits import document_split
from tl_moe.models.hook_names import get_act_name

PARAMS = {"ks": (1,), "random_state": 0}
N_DOCS, PER_DOC, MINIMUM = 100, 40, 50


def one_sided_store(seed: int = 0) -> tuple[StoredTokens, torch.Tensor]:
    """Three concepts, each encoded exactly by one neuron of layer 1:

    - ``selection_rich``: 30% positives on selection documents, on the test side only 10 positives in
      one document (fewer than MINIMUM);
    - ``test_rich``: 30% positives on test documents, on the selection side only 10 (fewer than MINIMUM);
    - ``both``: 30% positives everywhere.
    """
    g = torch.Generator().manual_seed(seed)
    n = N_DOCS * PER_DOC
    doc = torch.arange(N_DOCS).repeat_interleave(PER_DOC)
    selection = torch.from_numpy(document_split(doc.numpy(), seed=0) == 0)
    labels = torch.rand(n, 3, generator=g) < 0.3
    first_test = int(doc[~selection][0])
    first_selection = int(doc[selection][0])
    labels[~selection, 0] = False
    labels[(doc == first_test).nonzero().flatten()[:10], 0] = True
    labels[selection, 1] = False
    labels[(doc == first_selection).nonzero().flatten()[:10], 1] = True
    noise = [torch.randn(n, 8, generator=g) for _ in range(2)]
    for c in range(3):
        noise[1][:, c] = labels[:, c].float() * 2.0 - 1.0
    stored = StoredTokens(
        token_index=torch.arange(n),
        input_ids=torch.zeros(n, dtype=torch.long),
        domain=torch.zeros(n, dtype=torch.long),
        labels=labels,
        rows={get_act_name("neuron", layer): noise[layer].half() for layer in (0, 1)},
        domain_names=("prose",),
        concept_names=("selection_rich", "test_rich", "both"),
        doc_index=doc,
    )
    return stored, selection


def _arm(stored, selection, name="dense"):
    docs = np.unique(stored.doc_index[~selection].numpy())
    return held_out_arm(name, stored, dense_layer_blocks(stored, (0, 1)), selection, docs, PARAMS, MINIMUM)


def test_a_concept_is_kept_by_its_selection_side_counts_not_its_test_side_counts():
    stored, selection = one_sided_store()
    arm = _arm(stored, selection)
    chosen = set(arm.chosen["concept"])
    # Enough positives on the selection side, too few on the test side: chosen, and scored on test.
    assert "selection_rich" in chosen and "both" in chosen
    rich = arm.chosen.set_index("concept").loc["selection_rich"]
    assert rich["n_pos_test"] < MINIMUM and rich["unit"] == "L1"
    # Plenty of positives on the test side, too few on the selection side: never chosen.
    assert "test_rich" not in chosen
    assert arm.has()[0].tolist() == [True, False, True]
    # The selection F1 of every unit on test_rich is NaN (not eligible), whatever its test counts.
    units = arm.units[arm.units["concept"] == "test_rich"]
    assert units["selection_f1"].isna().all() and (units["n_pos_test"] >= MINIMUM).any()


def test_the_comparison_counts_the_concepts_selected_in_both_arms():
    stored, selection = one_sided_store()
    a, b = _arm(stored, selection, "a"), _arm(stored, selection, "b")
    (f1,) = [r for r in compare(a, b, n_resamples=200) if r["metric"] == "f1"]
    assert f1["n_concepts_selected"] == 2  # selection_rich and both; test_rich was never chosen
    # selection_rich has too few test positives for the per-concept gate (decided before resampling):
    # dropped, with the reason; both is kept.
    assert f1["n_concepts"] == 1 and f1["n_concepts_dropped"] == 1
    assert f1["dropped_concepts"].startswith("selection_rich: positives in ")
    assert f1["estimate"] == 0.0


def test_the_concept_filter_counts_selection_documents_only():
    from tl_moe.analysis.held_out_study import usable_on_selection

    stored, selection = one_sided_store()
    kept = usable_on_selection(stored, selection, MINIMUM)
    assert kept.concept_names == ("selection_rich", "both")
    assert torch.equal(kept.labels, stored.labels[:, [0, 2]])
    # Scrambling the test side's labels changes no choice.
    scrambled = stored.labels.clone()
    scrambled[~selection] = torch.rand(int((~selection).sum()), 3) < 0.5
    other = StoredTokens(
        stored.token_index,
        stored.input_ids,
        stored.domain,
        scrambled,
        stored.rows,
        stored.domain_names,
        stored.concept_names,
        stored.doc_index,
    )
    assert usable_on_selection(other, selection, MINIMUM).concept_names == kept.concept_names
    original, changed = _arm(stored, selection), _arm(other, selection)
    assert original.chosen[["concept", "k", "unit", "selection_f1"]].equals(
        changed.chosen[["concept", "k", "unit", "selection_f1"]]
    )


def test_a_control_in_draws_is_compared_through_the_mean_of_its_draws_per_concept():
    """Two draws of a control: the control's score per concept is the mean of the draws' scores, in
    the estimate (checked by hand) and in every resample (a control equal to the first arm in both
    draws gives exactly 0). Two draws that miss positives at the same rate differ by chance only, so the
    draw-mean t interval (1 degree of freedom for the draws) still excludes 0."""
    from tl_moe.analysis.held_out_probing import balanced_f1

    stored, selection = one_sided_store()
    a = _arm(stored, selection, "a")
    rng = np.random.default_rng(3)
    draws = []
    for d in range(2):
        counts = a.doc_counts.copy()
        tp, fn = counts[..., 0].copy(), counts[..., 1].copy()
        moved = rng.binomial(tp.astype(int), 0.3)  # each draw misses some positives, at the same rate
        counts[..., 0], counts[..., 1] = tp - moved, fn + moved
        draws.append(
            dataclasses.replace(a, name=f"control[{d}]", doc_counts=counts)  # same choices, other counts
        )
    (f1,) = [r for r in compare(a, draws, n_resamples=300) if r["metric"] == "f1"]
    scored = [a.concepts.index("both")]  # selection_rich is dropped by the per-concept gate
    assert f1["dropped_concepts"].startswith("selection_rich: ")
    score_a = balanced_f1(a.doc_counts[0, scored].sum(1))
    score_b = np.mean([balanced_f1(d.doc_counts[0, scored].sum(1)) for d in draws], axis=0)
    assert f1["a_mean"] == pytest.approx(score_a.mean()) and f1["b_mean"] == pytest.approx(score_b.mean())
    assert f1["estimate"] == pytest.approx((score_a - score_b).mean()) and f1["n_draws"] == 2
    assert f1["ci_low"] > 0 and f1["bootstrap_p"] < 0.05
    (same,) = [r for r in compare(a, [a, a], n_resamples=300) if r["metric"] == "f1"]
    assert same["estimate"] == 0.0 and same["ci_low"] == 0.0 == same["ci_high"]


def test_the_matched_count_control_draws_d_expert_neurons_per_layer_and_draw():
    from tl_moe.analysis.held_out_probing import neuron_subset

    first = neuron_subset(256, 128, layer=1, draw=0, seed=0)
    assert len(first) == 128 and len(set(first.tolist())) == 128 and int(first.max()) < 256
    assert torch.equal(first, neuron_subset(256, 128, layer=1, draw=0, seed=0))  # seeded
    assert not torch.equal(first, neuron_subset(256, 128, layer=1, draw=1, seed=0))
    assert not torch.equal(first, neuron_subset(256, 128, layer=2, draw=0, seed=0))
    assert torch.equal(neuron_subset(64, 128, layer=0, draw=2, seed=0), torch.arange(64))  # fewer: all

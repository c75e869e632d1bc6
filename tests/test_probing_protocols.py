"""The two probing protocols on planted cases whose answer is known.

- a neuron that encodes a concept perfectly is found with F1 = 1 under held-out selection;
- permuted labels give balanced accuracy at chance (0.5) under held-out selection;
- an MoE computing exactly a dense model's function: the dense-on-routed-tokens control is 0 with an
  interval covering 0, while the paper's protocol still shows an MoE-vs-dense gap;
- an untrained MoE vs an untrained dense model: the held-out difference is small.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.held_out_probing import compare, dense_layer_blocks, held_out_arm, permuted_labels
from tl_moe.analysis.splits import document_split
from tl_moe.models.hook_names import get_act_name
from tl_moe.pipeline.sections.probing import ROUTED_COUNT

PARAMS = {"ks": (1, 4), "random_state": 0}


def synthetic_store(n_docs=100, tokens_per_doc=40, seed=0) -> StoredTokens:
    """Two "dense layers" of 16 neurons: layer 1 neuron 3 equals the label of concept ``planted``."""
    g = torch.Generator().manual_seed(seed)
    n = n_docs * tokens_per_doc
    labels = torch.rand(n, 2, generator=g) < torch.tensor([0.3, 0.2])
    noise = [torch.randn(n, 16, generator=g) for _ in range(2)]
    noise[1][:, 3] = labels[:, 0].float() * 2.0 - 1.0
    return StoredTokens(
        token_index=torch.arange(n),
        input_ids=torch.zeros(n, dtype=torch.long),
        domain=torch.zeros(n, dtype=torch.long),
        labels=labels,
        rows={get_act_name("neuron", layer): noise[layer].half() for layer in (0, 1)},
        domain_names=("prose",),
        concept_names=("planted", "noise"),
        doc_index=torch.arange(n_docs).repeat_interleave(tokens_per_doc),
    )


def arm_of(stored, labels=None, name="dense"):
    selection = torch.from_numpy(document_split(stored.doc_index.numpy(), seed=0) == 0)
    docs = np.unique(stored.doc_index[~selection].numpy())
    return held_out_arm(name, stored, dense_layer_blocks(stored, (0, 1)), selection, docs, PARAMS, 50, labels)


def test_a_planted_neuron_is_found_with_f1_1_under_held_out_selection():
    arm = arm_of(synthetic_store())
    planted = arm.chosen[arm.chosen["concept"] == "planted"].set_index("k")
    assert set(planted.index) == {1, 4}
    assert (planted["unit"] == "L1").all()
    assert planted.loc[1, "test_f1"] == 1.0 and planted.loc[1, "test_balanced_accuracy"] == 1.0
    assert planted.loc[1, "selection_f1"] == 1.0
    noise = arm.chosen[arm.chosen["concept"] == "noise"]
    assert (noise["test_balanced_accuracy"] < 0.6).all()  # nothing to find: chance stays chance


def test_permuted_labels_score_at_chance_and_compare_pairs_the_same_documents():
    stored = synthetic_store()
    real, null = arm_of(stored), arm_of(stored, permuted_labels(stored, seed=1), name="permuted")
    records = {(r["k"], r["metric"]): r for r in compare(real, null, n_resamples=500)}
    chance = records[(1, "balanced_accuracy")]
    assert chance["b_mean"] == pytest.approx(0.5, abs=0.05)
    assert chance["n_concepts"] == 2 and chance["n_documents"] == len(real.test_docs)
    # The planted concept's gain over the null (0.5 -> 1.0) averaged with the noise concept's ~0:
    assert chance["estimate"] == pytest.approx(0.25, abs=0.05)
    assert chance["ci_low"] > 0.15 and chance["interval_available"]
    same = {(r["k"], r["metric"]): r for r in compare(real, real, n_resamples=200)}
    assert same[(1, "f1")]["estimate"] == 0.0 and same[(1, "f1")]["ci_low"] == 0.0


@pytest.fixture(scope="module")
def planted_pair_run(tmp_path_factory):
    import sys
    from pathlib import Path

    import tl_moe
    from tl_moe.pipeline import RunOptions, run

    sys.path.insert(0, str(Path(__file__).parent))
    from planted_models import dense_copy_pair

    directory = tmp_path_factory.mktemp("planted")
    moe_dir, dense_dir = dense_copy_pair(directory)
    moe, dense = tl_moe.load(moe_dir, device="cpu"), tl_moe.load(dense_dir, device="cpu")
    ids = moe.tokenizer("def f(x):\n    return x + 1", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (moe(ids) - dense(ids)).abs().max() < 1e-4  # the MoE computes the dense function
    options = RunOptions(
        model="moe",
        dense_baseline="dense",
        max_tokens=10_000,
        batch_size=8,
        probe_ks=(1, 4),
        min_examples=20,
        held_out_min_examples=20,
        min_documents=10,  # a small planted run (~23 test documents) whose answer is known
        bootstrap_resamples=1000,
        skip_untrained_null=True,
        progress=False,
    )
    return run(options, analyses=["probing"], models={"moe": moe, "dense": dense}, write_report=False)


def test_an_moe_computing_the_dense_function_shows_no_expert_advantage_on_routed_tokens(planted_pair_run):
    probing = planted_pair_run["probing"]
    for k in (1, 4):
        routed = probing.comparison("held_out", "moe_vs_dense_on_routed_tokens", k)
        # Same tokens, same activations (up to float16 storage), same probes: zero, interval covering 0.
        assert abs(routed["estimate"]) <= 0.01, routed
        assert routed["ci_low"] <= 0.0 <= routed["ci_high"], routed
        assert routed["ci_high"] - routed["ci_low"] <= 0.02, routed
        # The per-concept gate keeps the concepts with positives and negatives in 30 test documents.
        assert routed["n_concepts"] >= 5
        assert routed["n_concepts"] + routed["n_concepts_dropped"] == routed["n_concepts_selected"]
        # ... while the paper's protocol still reports a gap in favour of the MoE.
        paper = probing.comparison("paper", "moe_vs_dense", k)
        # (an estimate only: units chosen on the reported split have no document-level interval)
        assert paper["estimate"] > 0.05 and pd.isna(paper["ci_low"]) and not paper["interval_available"], (
            paper
        )
        assert paper["n_concepts_moe_higher"] > paper["n_concepts"] / 2, paper
    assert {
        "moe_vs_dense",
        "moe_vs_matched_subsets",
        "permuted_labels",
        "moe_vs_dense_on_routed_tokens_matched_count",
        "permuted_labels_on_routed_tokens",
    } <= set(probing.comparisons["comparison"])
    # The matched-count control: here d_expert = d_mlp = 64, so its one draw holds every dense neuron
    # and it equals the unmatched routed-token control exactly.
    for k in (1, 4):
        count = probing.comparison("held_out", "moe_vs_dense_on_routed_tokens_matched_count", k)
        routed = probing.comparison("held_out", "moe_vs_dense_on_routed_tokens", k)
        assert count["n_draws"] == 1 and count["n_concepts"] == routed["n_concepts"] >= 5, count
        assert count["estimate"] == routed["estimate"] and count["ci_low"] == routed["ci_low"]
    assert [name for name in probing.held_out if name.startswith(ROUTED_COUNT + "[")] == [
        ROUTED_COUNT + "[0]"
    ]
    # Per concept group at k = 1: every group's routed-token control is 0 too; counts recorded.
    groups = probing.groups[probing.groups["metric"] == "f1"]
    routed_groups = groups[groups["comparison"] == "moe_vs_dense_on_routed_tokens"]
    assert len(routed_groups) >= 2 and (routed_groups["k"] == 1).all()
    scored = routed_groups[routed_groups["estimate"].notna()]  # a group the gate empties has no estimate
    assert len(scored) >= 1 and (scored["estimate"].abs() <= 0.02).all()
    assert (scored["n_documents_with_positives"] <= scored["n_documents"]).all()
    assert probing.records()["groups"][0]["group"] in set(groups["group"])


def test_untrained_moe_vs_untrained_dense_differs_little_under_the_held_out_protocol(tmp_path):
    """Measured (seed 0, 10k tokens, k=1, 23 concepts, 23 test documents): held-out F1 difference
    +0.044 [+0.022, +0.080] against the paper protocol's +0.159. Asserted with margin: |d| < 0.08
    and less than half the paper protocol's gap."""
    import sys
    from pathlib import Path

    import tl_moe
    from tl_moe.pipeline import RunOptions, run

    sys.path.insert(0, str(Path(__file__).parent))
    from planted_models import untrained_pair

    moe_dir, dense_dir = untrained_pair(tmp_path)
    models = {"moe": tl_moe.load(moe_dir, device="cpu"), "dense": tl_moe.load(dense_dir, device="cpu")}
    options = RunOptions(
        model="moe",
        dense_baseline="dense",
        max_tokens=10_000,
        batch_size=8,
        probe_ks=(1,),
        min_examples=20,
        held_out_min_examples=20,
        min_documents=10,  # a small planted run (~23 test documents) whose answer is known
        bootstrap_resamples=1000,
        skip_untrained_null=True,
        progress=False,
    )
    probing = run(options, analyses=["probing"], models=models, write_report=False)["probing"]
    held = probing.comparison("held_out", "moe_vs_dense", 1)
    paper = probing.comparison("paper", "moe_vs_dense", 1)
    # d_expert 32 < d_mlp 64: the matched-count control is three draws of 32 dense neurons.
    count = probing.comparison("held_out", "moe_vs_dense_on_routed_tokens_matched_count", 1)
    assert count["n_draws"] == 3 and count["estimate"] is not None
    assert len([name for name in probing.held_out if name.startswith(ROUTED_COUNT + "[")]) == 3
    assert all(
        arm.chosen["unit"].str.endswith(f"draw {d}").all()
        for d, arm in enumerate(probing.held_out[f"{ROUTED_COUNT}[{i}]"] for i in range(3))
    )
    print("untrained pair: held-out", held, "paper", paper)
    assert abs(held["estimate"]) < 0.08 and held["ci_low"] < 0.06, held
    assert held["estimate"] < 0.5 * paper["estimate"], (held, paper)
